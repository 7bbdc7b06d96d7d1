#include "relation_access.hpp"

extern "C" {
#include "access/relation.h"
#include "catalog/pg_class.h"
#include "utils/acl.h"
#include "utils/lsyscache.h"
#include "utils/rls.h"
}

namespace popularity::pg {

namespace {

const char *relkind_name(char relkind) {
    switch (relkind) {
    case RELKIND_VIEW:
        return "a view";
    case RELKIND_MATVIEW:
        return "a materialized view";
    case RELKIND_PARTITIONED_TABLE:
        return "a partitioned table";
    case RELKIND_FOREIGN_TABLE:
        return "a foreign table";
    case RELKIND_INDEX:
    case RELKIND_PARTITIONED_INDEX:
        return "an index";
    case RELKIND_SEQUENCE:
        return "a sequence";
    case RELKIND_COMPOSITE_TYPE:
        return "a composite type";
    case RELKIND_TOASTVALUE:
        return "a TOAST table";
    default:
        return "not a table";
    }
}

// The relation's schema-qualified, quoted name, for messages (built only when one is raised).
const char *display_name(Oid relid) {
    return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
                                      get_rel_name(relid));
}

void check_privilege(Oid relid, AclMode privileges, AclMode one, const char *purpose) {
    if ((privileges & one) == 0 || pg_class_aclcheck(relid, GetUserId(), one) == ACLCHECK_OK) {
        return;
    }
    const char *name = display_name(relid);
    ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                    errmsg("permission denied for table %s", name),
                    errdetail("%s needs %s on the media table.", purpose,
                              (privileges & ACL_UPDATE) != 0 ? "SELECT and UPDATE" : "SELECT"),
                    errhint("Ask the table's owner to GRANT %s ON %s to the role.",
                            one == ACL_UPDATE ? "UPDATE" : "SELECT", name)));
}

} // namespace

void check_media_table(Oid relid, AclMode privileges, const char *purpose, const char *rls_hint,
                       bool partitioned_ok) {
    const char relkind = get_rel_relkind(relid);
    if (relkind == '\0') {
        ereport(ERROR,
                (errcode(ERRCODE_UNDEFINED_TABLE),
                 errmsg("relation with OID %u does not exist", relid),
                 errhint("%s takes a media table; popularity.media_types lists them.", purpose)));
    }
    if (relkind != RELKIND_RELATION && !(partitioned_ok && relkind == RELKIND_PARTITIONED_TABLE)) {
        ereport(ERROR, (errcode(ERRCODE_WRONG_OBJECT_TYPE),
                        errmsg("%s is not an ordinary table", display_name(relid)),
                        errdetail("It is %s.", relkind_name(relkind)),
                        errhint("%s reads the rows of an ordinary media table (or of the leaf "
                                "partitions of a partitioned one).",
                                purpose)));
    }
    check_privilege(relid, privileges, ACL_SELECT, purpose);
    check_privilege(relid, privileges, ACL_UPDATE, purpose);
    if (check_enable_rls(relid, InvalidOid, true) == RLS_ENABLED) {
        ereport(
            ERROR,
            (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
             errmsg("row-level security applies to %s for role %s", display_name(relid),
                    GetUserNameFromId(GetUserId(), false)),
             errdetail("%s reads the table directly, so it could not apply the policies.", purpose),
             errhint("%s", rls_hint)));
    }
}

Relation open_media_table(Oid relid, LOCKMODE lockmode, AclMode privileges, const char *purpose,
                          const char *rls_hint, bool partitioned_ok) {
    check_media_table(relid, privileges, purpose, rls_hint, partitioned_ok);
    Relation rel = try_relation_open(relid, lockmode);
    if (rel == nullptr) {
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE),
                        errmsg("table %s was dropped while %s was starting", get_rel_name(relid),
                               purpose)));
    }
    return rel;
}

AttrNumber media_column(Relation rel, const char *name, Oid type, Oid other_type) {
    TupleDesc desc = RelationGetDescr(rel);
    for (int i = 0; i < desc->natts; i++) {
        Form_pg_attribute att = TupleDescAttr(desc, i);
        if (att->attisdropped || strcmp(NameStr(att->attname), name) != 0) {
            continue;
        }
        if (att->atttypid != type && att->atttypid != other_type) {
            ereport(ERROR,
                    (errcode(ERRCODE_DATATYPE_MISMATCH),
                     errmsg("column \"%s\" of media table %s is of type %s, not %s", name,
                            RelationGetRelationName(rel), format_type_be(att->atttypid),
                            format_type_be(type)),
                     errhint("Change the column back, or register the media type again with "
                             "popularity.register_media_type() once the table has the columns "
                             "it needs.")));
        }
        return att->attnum;
    }
    ereport(ERROR,
            (errcode(ERRCODE_UNDEFINED_COLUMN),
             errmsg("media table %s has no column \"%s\"", RelationGetRelationName(rel), name),
             errhint("Register the media type again with popularity.register_media_type() "
                     "once the table has the columns it needs.")));
    pg_unreachable();
}

} // namespace popularity::pg
