// The checks every entry point that takes a media table makes before it reads a row: the relation
// exists, it is an ordinary table, the current user holds the privileges the operation needs, and
// the columns it reads have the types it reads them as. Views, foreign, partitioned and system
// relations never reach a table scan, and a column retyped under a running job is an error, never a
// misread datum.
//
// C-style: these raise with ereport (they never throw). Call them only from frames that hold no C++
// object with a non-trivial destructor (see guard.hpp).
#pragma once

#include "pg_includes.hpp"

extern "C" {
#include "utils/rel.h"
}

namespace popularity::pg {

// For the C++ scans that read a media table directly: checks kind, privileges (each of ACL_SELECT /
// ACL_UPDATE asked for, separately) and that no row-level security policy applies to the current
// role (a direct scan could not apply it; `rls_hint` says what to do instead), all before taking
// any lock, so a role without rights cannot queue locks on a table it may not read; then opens the
// relation with `lockmode`. `purpose` names the operation in messages ("refresh_constants").
// The checks of open_media_table alone, with no lock taken (the relation may change right after):
// for a job that must know before it starts whether the role may still run it at all.
// `partitioned_ok`: a partitioned table passes too (the jobs check its rights and policies, then
// open its leaf partitions one by one).
void check_media_table(Oid relid, AclMode privileges, const char *purpose, const char *rls_hint,
                       bool partitioned_ok = false);

Relation open_media_table(Oid relid, LOCKMODE lockmode, AclMode privileges, const char *purpose,
                          const char *rls_hint, bool partitioned_ok = false);

// The attribute number of column `name` of an open media table, whose type must be `type` or
// `other_type` (pass the same twice for one type); raises 42703 or 42804 naming the column.
AttrNumber media_column(Relation rel, const char *name, Oid type, Oid other_type);

} // namespace popularity::pg
