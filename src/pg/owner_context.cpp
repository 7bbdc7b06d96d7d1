#include "owner_context.hpp"

extern "C" {
#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "utils/syscache.h"
}

namespace popularity::pg {

SavedUser become_extension_owner() {
    const Oid schema = get_namespace_oid("popularity", false);
    HeapTuple tuple = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(schema));
    if (!HeapTupleIsValid(tuple)) {
        elog(ERROR, "cache lookup failed for schema popularity");
    }
    const Oid owner = reinterpret_cast<Form_pg_namespace>(GETSTRUCT(tuple))->nspowner;
    ReleaseSysCache(tuple);
    SavedUser saved;
    GetUserIdAndSecContext(&saved.user, &saved.security_context);
    SetUserIdAndSecContext(owner, saved.security_context | SECURITY_LOCAL_USERID_CHANGE);
    return saved;
}

void restore_user(const SavedUser &saved) {
    SetUserIdAndSecContext(saved.user, saved.security_context);
}

} // namespace popularity::pg
