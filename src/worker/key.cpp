// How the workers name a row by its primary key, whatever its width: the key written as text.
//
//   one column:        the column's text form (its type's output), e.g. 3f6c...-uuid
//   several columns:   a text array of the columns' text forms, e.g. {3f6c...,"2024-01-05
//   00:00:00+00"}
//
// Rows a batch could not lock are recorded so (popularity.refresh_skipped.row_key), and so is each
// row of the filter's undo record (popularity.tag_filter_removed.row_keys); they are found again
// by the key's columns, each compared with its type's own equality operator (the primary key's
// index serves it). popularity.undo_filter_tags builds the same comparison in SQL
// (popularity._key_match_sql): the two must agree on this format.
#include "../pg/name_lookup.hpp"
#include "engine.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
}

namespace popularity::worker {

void resolve_key(Task &task, char **names, int count) {
    if (count < 1) {
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("table %s has no primary key", task.table)));
    }
    MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
    task.key_count = count;
    task.key_names = names;
    task.key_type_ids = static_cast<Oid *>(palloc(sizeof(Oid) * count));
    task.key_outputs = static_cast<Oid *>(palloc(sizeof(Oid) * count));
    task.key_atts = static_cast<AttrNumber *>(palloc0(sizeof(AttrNumber) * count));
    StringInfoData text;
    StringInfoData match;
    initStringInfo(&text);
    initStringInfo(&match);
    if (count > 1) {
        appendStringInfoString(&text, "ARRAY[");
    }
    for (int i = 0; i < count; i++) {
        // The type from the media table (a leaf has the same columns, maybe at other positions).
        const AttrNumber att = get_attnum(task.relid, names[i]);
        if (att == InvalidAttrNumber) {
            ereport(ERROR,
                    (errcode(ERRCODE_UNDEFINED_COLUMN),
                     errmsg("media table %s has no key column \"%s\"", task.table, names[i])));
        }
        task.key_type_ids[i] = get_atttype(task.relid, att);
        bool varlena = false;
        getTypeOutputInfo(task.key_type_ids[i], &task.key_outputs[i], &varlena);
        const char *column = quote_identifier(names[i]);
        const char *type = format_type_be_qualified(task.key_type_ids[i]);
        const char *equals = qualified_equality(task.key_type_ids[i]);
        appendStringInfo(&text, "%st.%s::pg_catalog.text", i > 0 ? ", " : "", column);
        if (count == 1) {
            appendStringInfo(&match, "t.%s %s k.key::%s", column, equals, type);
        } else {
            appendStringInfo(&match, "%st.%s %s (k.key::pg_catalog.text[])[%d]::%s",
                             i > 0 ? " AND " : "", column, equals, i + 1, type);
        }
    }
    if (count > 1) {
        appendStringInfoString(&text, "]::pg_catalog.text");
    }
    task.key_text_sql = text.data;
    task.key_match_sql = match.data;
    MemoryContextSwitchTo(old);
}

char *key_text(const Task &task, TupleTableSlot *slot) {
    if (task.key_count == 1) {
        bool isnull = true;
        const Datum key = slot_getattr(slot, task.key_atts[0], &isnull);
        return isnull ? nullptr : OidOutputFunctionCall(task.key_outputs[0], key);
    }
    Datum *parts = static_cast<Datum *>(palloc(sizeof(Datum) * task.key_count));
    bool *nulls = static_cast<bool *>(palloc(sizeof(bool) * task.key_count));
    for (int i = 0; i < task.key_count; i++) {
        const Datum key = slot_getattr(slot, task.key_atts[i], &nulls[i]);
        if (nulls[i]) {
            return nullptr; // never in a primary key
        }
        parts[i] = CStringGetTextDatum(OidOutputFunctionCall(task.key_outputs[i], key));
    }
    int dims[1] = {task.key_count};
    int lbs[1] = {1};
    ArrayType *array =
        construct_md_array(parts, nulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT);
    return OidOutputFunctionCall(F_ARRAY_OUT, PointerGetDatum(array));
}

} // namespace popularity::worker
