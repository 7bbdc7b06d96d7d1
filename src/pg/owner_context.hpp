// Reading and writing the extension's own tables with its owner's rights, from code that runs in
// other roles' statements (the ingestion triggers): ingestion roles need no right on the
// extension's tables, and row-level security on them (which filters what a role may see of other
// roles' media types) never hides configuration from the triggers. Every statement run this way
// is fully schema-qualified, as it runs under the caller's search_path.
//
// C-style: may raise. A transaction or subtransaction abort restores the caller's identity.
#pragma once

#include "pg_includes.hpp"

namespace popularity::pg {

struct SavedUser {
    Oid user;
    int security_context;
};

// Becomes the owner of the extension's schema (`popularity`), the role that owns its tables.
SavedUser become_extension_owner();
void restore_user(const SavedUser &saved);

} // namespace popularity::pg
