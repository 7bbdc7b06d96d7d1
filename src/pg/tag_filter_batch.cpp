// One main-pass batch of CALL filter_tags, in C++: popularity._filter_tags_range scans a block
// range of the media table with the caller's snapshot, runs the tag rules once per row, locks the
// rows whose tags change (FOR UPDATE, skipping rows another transaction holds) and rewrites the
// locked ones with one UPDATE through SPI (so triggers and indexes see an ordinary UPDATE). It
// returns the batch's counts and the identifiers of the rows it could not lock: the procedure keeps
// those pending and retries them by identifier (its SQL path).
//
// The same shape as a refresh batch (src/worker/refresh_worker.cpp): the body holds only palloc'd
// plain data, so an ERROR raised anywhere in it leaves nothing to destroy; the C++ parts that
// throw (the rules) run in frames that hold nothing either.
#include "../core/tag_rules.hpp"

#include "guard.hpp"
#include "relation_access.hpp"
#include "tag_filter.hpp"
#include "tag_rules_cache.hpp"

extern "C" {
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/uuid.h"
}

#include <cstring>

using namespace popularity;

namespace {

// The drop reasons reported per batch: every verdict but keep, in TagVerdict order.
constexpr int kReasons = static_cast<int>(core::kTagVerdictCount) - 1;

// A row of the range whose tags change.
struct TagCandidate {
    ItemPointerData tid; // the version scanned, then the version locked
    pg_uuid_t identifier;
    bool has_identifier;
    bool locked;
    bool changes; // false when the version locked no longer loses a tag
    Jsonb *tags;  // the new tags (not built in a dry run)
    Jsonb *removed; // [[position, tag], ...] the run records (only when it records)
    int64 drops[kReasons];
};

struct RangeBatch {
    Relation rel;
    AttrNumber identifier_att;
    AttrNumber tags_att;
    AttrNumber provider_att;
    const core::TagRules *rules;
    bool dry_run;
    int64 record_run; // the run that records what it removes in tag_filter_removed; 0: none
    MemoryContext batch_context; // candidates and new tags
    MemoryContext row_context;   // reset after every row
    TagCandidate *candidates;
    int candidate_count;
    int candidate_capacity;
    int64 scanned;
    int64 malformed;
};

// Runs the rules on the tags of the row in `slot`. Returns true when they lose a tag; the new
// tags (unless dry_run) and the drop counts are then stored in `c`. Counts the row as malformed
// (when `count`) if its tags are not an array.
bool examine_row(RangeBatch &batch, TupleTableSlot *slot, TagCandidate &c, bool count) {
    bool isnull = false;
    const Datum tags = slot_getattr(slot, batch.tags_att, &isnull);
    if (isnull) {
        return false;
    }
    bool provider_null = false;
    const Datum provider = slot_getattr(slot, batch.provider_att, &provider_null);
    MemoryContext old = MemoryContextSwitchTo(batch.row_context);
    Jsonb *document = DatumGetJsonbP(tags);
    std::optional<std::string_view> record_provider;
    if (!provider_null) {
        text *provider_text = DatumGetTextPP(provider);
        record_provider =
            pg::server_text_as_utf8(VARDATA_ANY(provider_text), VARSIZE_ANY_EXHDR(provider_text));
    }
    const pg::Examination examination = pg::examine(document, *batch.rules, record_provider);
    const bool changes = !examination.not_array && examination.dropped > 0;
    if (examination.not_array && count) {
        batch.malformed++;
    }
    if (changes) {
        for (int i = 0; i < kReasons; i++) {
            c.drops[i] = examination.counts[static_cast<std::size_t>(i) + 1];
        }
        c.tags = nullptr;
        c.removed = nullptr;
        if (!batch.dry_run) {
            MemoryContextSwitchTo(batch.batch_context);
            c.tags = pg::build_kept_array(); // refers to `document`: built before the reset
            if (batch.record_run != 0) {
                c.removed = pg::build_removed_array(document);
            }
        }
        bool identifier_null = false;
        const Datum identifier = slot_getattr(slot, batch.identifier_att, &identifier_null);
        c.has_identifier = !identifier_null;
        if (!identifier_null) {
            std::memcpy(&c.identifier, DatumGetUUIDP(identifier), sizeof(pg_uuid_t));
        }
    }
    MemoryContextSwitchTo(old);
    MemoryContextReset(batch.row_context);
    return changes;
}

// Scans the blocks [from, to) with the active snapshot; keeps the rows whose tags change. Nothing
// is locked here.
void scan_range(RangeBatch &batch, int64 from, int64 to) {
    ItemPointerData min_tid;
    ItemPointerData max_tid;
    ItemPointerSet(&min_tid, static_cast<BlockNumber>(from), FirstOffsetNumber);
    ItemPointerSet(&max_tid, static_cast<BlockNumber>(to - 1), MaxOffsetNumber);
    TupleTableSlot *slot = table_slot_create(batch.rel, nullptr);
    TableScanDesc scan =
        table_beginscan_tidrange(batch.rel, GetActiveSnapshot(), &min_tid, &max_tid);
    while (table_scan_getnextslot_tidrange(scan, ForwardScanDirection, slot)) {
        if ((++batch.scanned & 1023) == 0) {
            CHECK_FOR_INTERRUPTS();
        }
        if (batch.candidate_count == batch.candidate_capacity) {
            batch.candidate_capacity *= 2;
            batch.candidates = static_cast<TagCandidate *>(
                repalloc(batch.candidates, sizeof(TagCandidate) * batch.candidate_capacity));
        }
        TagCandidate &c = batch.candidates[batch.candidate_count];
        if (examine_row(batch, slot, c, true)) {
            c.tid = slot->tts_tid;
            c.locked = false;
            c.changes = true;
            batch.candidate_count++;
        }
    }
    table_endscan(scan);
    ExecDropSingleTupleTableSlot(slot);
}

// Locks the candidates FOR UPDATE, skipping rows another transaction holds. A row updated since
// the snapshot is followed to its last version, locked, and examined again (as FOR UPDATE would
// re-check it). Rows without an identifier are left alone, as the procedure's SQL path (which
// finds rows by identifier) leaves them. Returns how many locked rows change.
int lock_candidates(RangeBatch &batch) {
    if (batch.candidate_count == 0) {
        return 0;
    }
    TupleTableSlot *slot = table_slot_create(batch.rel, nullptr);
    const CommandId cid = GetCurrentCommandId(true);
    // As FOR UPDATE: under REPEATABLE READ a row updated since the snapshot is a serialization
    // failure, not a row to follow.
    const bool follow = !IsolationUsesXactSnapshot();
    int changing = 0;
    for (int i = 0; i < batch.candidate_count; i++) {
        TagCandidate &c = batch.candidates[i];
        if (!c.has_identifier) {
            c.changes = false;
            continue;
        }
        TM_FailureData failure;
        const TM_Result result = table_tuple_lock(
            batch.rel, &c.tid, GetActiveSnapshot(), slot, cid, LockTupleExclusive, LockWaitSkip,
            follow ? TUPLE_LOCK_FLAG_FIND_LAST_VERSION : 0, &failure);
        if (!follow && (result == TM_Updated || result == TM_Deleted)) {
            ereport(ERROR, (errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
                            errmsg("could not serialize access due to concurrent update")));
        }
        c.locked = result == TM_Ok;
        if (!c.locked) {
            continue;
        }
        if (failure.traversed) {
            // The last version, as it stands now.
            c.changes = examine_row(batch, slot, c, false);
        }
        if (c.changes) {
            changing++;
        }
    }
    ExecDropSingleTupleTableSlot(slot);
    return changing;
}

// Rewrites the locked rows that change with one UPDATE, through the executor, and (when the run
// records) writes what it removed from each row into popularity.tag_filter_removed in the same
// statement, with a hash of the tags the row got (undo restores only rows that still have them).
// Returns how many rows it wrote.
int update_locked(RangeBatch &batch, int changing) {
    if (changing == 0) {
        return 0;
    }
    Datum *tids = static_cast<Datum *>(palloc(sizeof(Datum) * changing));
    Datum *tags = static_cast<Datum *>(palloc(sizeof(Datum) * changing));
    Datum *removed = static_cast<Datum *>(palloc(sizeof(Datum) * changing));
    int n = 0;
    for (int i = 0; i < batch.candidate_count; i++) {
        TagCandidate &c = batch.candidates[i];
        if (c.locked && c.changes) {
            tids[n] = PointerGetDatum(&c.tid);
            tags[n] = JsonbPGetDatum(c.tags);
            removed[n] = JsonbPGetDatum(c.removed);
            n++;
        }
    }
    const bool record = batch.record_run != 0;
    Oid types[4] = {TIDARRAYOID, JSONBARRAYOID, JSONBARRAYOID, INT8OID};
    Datum values[4] = {
        PointerGetDatum(
            construct_array(tids, n, TIDOID, sizeof(ItemPointerData), false, TYPALIGN_SHORT)),
        PointerGetDatum(construct_array(tags, n, JSONBOID, -1, false, TYPALIGN_INT)),
        record ? PointerGetDatum(construct_array(removed, n, JSONBOID, -1, false, TYPALIGN_INT))
               : PointerGetDatum(nullptr),
        Int64GetDatum(batch.record_run)};
    const char *table = quote_qualified_identifier(
        get_namespace_name(RelationGetNamespace(batch.rel)), RelationGetRelationName(batch.rel));
    const char *sql =
        record ? psprintf("WITH w AS (UPDATE %s AS t SET tags = u.tags FROM ROWS FROM"
                          " (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3))"
                          " AS u(tid, tags, removed) WHERE t.ctid OPERATOR(pg_catalog.=) u.tid"
                          " RETURNING t.identifier, t.tags, u.removed)"
                          " INSERT INTO popularity.tag_filter_removed"
                          " (run_id, identifier, removed, tags_hash)"
                          " SELECT $4, w.identifier, w.removed,"
                          " popularity._tags_hash(w.tags) FROM w",
                          table)
               : psprintf("UPDATE %s AS t SET tags = u.tags FROM ROWS FROM (pg_catalog.unnest($1),"
                          " pg_catalog.unnest($2)) AS u(tid, tags)"
                          " WHERE t.ctid OPERATOR(pg_catalog.=) u.tid",
                          table);
    if (SPI_connect() != SPI_OK_CONNECT) {
        elog(ERROR, "popularity._filter_tags_range: SPI_connect failed");
    }
    const int rc = SPI_execute_with_args(sql, record ? 4 : 2, types, values, nullptr, false, 0);
    if (rc != (record ? SPI_OK_INSERT : SPI_OK_UPDATE)) {
        elog(ERROR, "popularity._filter_tags_range: updating the batch failed: %s",
             SPI_result_code_string(rc));
    }
    const uint64 updated = SPI_processed;
    SPI_finish();
    // Fewer when a BEFORE UPDATE trigger skipped rows (returned NULL): counted as the SQL batch
    // counts them, as not changed.
    return static_cast<int>(updated);
}

} // namespace

// popularity._filter_tags_range(media_table regclass, media_type text, from_block bigint,
//   to_block bigint, dry_run boolean, record_run bigint, OUT rows_scanned bigint, OUT
//   rows_malformed bigint, OUT rows_changed bigint, OUT drops bigint[], OUT unlocked uuid[])
// One main-pass batch of CALL filter_tags over the blocks [from_block, to_block). drops: tags
// dropped in the changed rows (dry run: in the rows that would change) per reason {malformed,
// low_accuracy, filtered_provider, exact_denylist, substring_denylist, machine_label}; unlocked:
// the identifiers of rows that change but were held by another transaction (never in a dry run).
// record_run: the run whose record of removed tags (popularity.tag_filter_removed) the batch
// writes, or 0 for none.
POPULARITY_FUNCTION(popularity_filter_tags_range) {
    const Oid relid = PG_GETARG_OID(0);
    text *media_type = PG_GETARG_TEXT_PP(1);
    const int64 from = PG_GETARG_INT64(2);
    const int64 to = PG_GETARG_INT64(3);
    const bool dry_run = PG_GETARG_BOOL(4);
    const int64 record_run = dry_run ? 0 : PG_GETARG_INT64(5);
    if (from < 0 || to < from || to > static_cast<int64>(MaxBlockNumber) + 1) {
        throw pg::SqlError(ERRCODE_INVALID_PARAMETER_VALUE,
                           pg::strprintf("invalid block range [%lld, %lld)",
                                         static_cast<long long>(from), static_cast<long long>(to)),
                           "", "Blocks are numbered from 0; to_block is not below from_block.");
    }
    TupleDesc result_desc = nullptr;
    if (get_call_result_type(fcinfo, nullptr, &result_desc) != TYPEFUNC_COMPOSITE) {
        elog(ERROR, "popularity._filter_tags_range: the result type is not composite");
    }
    // Rules first: loading them runs SQL, and a media type that is not registered fails here.
    const core::TagRules *rules = &pg::tag_rules_for(
        std::string_view(VARDATA_ANY(media_type), VARSIZE_ANY_EXHDR(media_type)));
    // C-style checks (they raise with ereport): only plain data is alive in this frame.
    RangeBatch batch{};
    batch.rel = pg::open_media_table(relid, dry_run ? AccessShareLock : RowExclusiveLock,
                                     dry_run ? ACL_SELECT : ACL_SELECT | ACL_UPDATE, "filter_tags",
                                     "CALL filter_tags filters such a table with its SQL scan.");
    batch.identifier_att = pg::media_column(batch.rel, "identifier", UUIDOID, UUIDOID);
    batch.tags_att = pg::media_column(batch.rel, "tags", JSONBOID, JSONBOID);
    batch.provider_att = pg::media_column(batch.rel, "provider", TEXTOID, VARCHAROID);
    batch.rules = rules;
    batch.dry_run = dry_run;
    batch.record_run = record_run;
    MemoryContext caller_context = CurrentMemoryContext;
    batch.batch_context = AllocSetContextCreate(caller_context, "popularity tag filter batch",
                                                ALLOCSET_DEFAULT_SIZES);
    batch.row_context = AllocSetContextCreate(batch.batch_context, "popularity tag filter row",
                                              ALLOCSET_SMALL_SIZES);
    MemoryContextSwitchTo(batch.batch_context);
    batch.candidate_capacity = 1024;
    batch.candidates =
        static_cast<TagCandidate *>(palloc(sizeof(TagCandidate) * batch.candidate_capacity));

    if (from < to) {
        scan_range(batch, from, to);
    }

    int64 drops[kReasons] = {0, 0, 0, 0, 0, 0};
    int64 changed = 0;
    Datum *unlocked = static_cast<Datum *>(palloc(sizeof(Datum) * Max(batch.candidate_count, 1)));
    int unlocked_count = 0;
    if (dry_run) {
        changed = batch.candidate_count;
        for (int i = 0; i < batch.candidate_count; i++) {
            for (int r = 0; r < kReasons; r++) {
                drops[r] += batch.candidates[i].drops[r];
            }
        }
    } else {
        const int changing = lock_candidates(batch);
        changed = update_locked(batch, changing);
        for (int i = 0; i < batch.candidate_count; i++) {
            TagCandidate &c = batch.candidates[i];
            if (c.locked && c.changes) {
                for (int r = 0; r < kReasons; r++) {
                    drops[r] += c.drops[r];
                }
            } else if (!c.locked && c.has_identifier) {
                unlocked[unlocked_count++] = UUIDPGetDatum(&c.identifier);
            }
        }
    }
    table_close(batch.rel, NoLock);

    MemoryContextSwitchTo(caller_context);
    Datum drop_datums[kReasons];
    for (int r = 0; r < kReasons; r++) {
        drop_datums[r] = Int64GetDatum(drops[r]);
    }
    Datum values[5] = {
        Int64GetDatum(batch.scanned), Int64GetDatum(batch.malformed), Int64GetDatum(changed),
        PointerGetDatum(construct_array(drop_datums, kReasons, INT8OID, sizeof(int64),
                                        FLOAT8PASSBYVAL, TYPALIGN_DOUBLE)),
        PointerGetDatum(
            construct_array(unlocked, unlocked_count, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR))};
    bool nulls[5] = {false, false, false, false, false};
    HeapTuple tuple = heap_form_tuple(BlessTupleDesc(result_desc), values, nulls);
    MemoryContextDelete(batch.batch_context);
    PG_RETURN_DATUM(HeapTupleGetDatum(tuple));
}
