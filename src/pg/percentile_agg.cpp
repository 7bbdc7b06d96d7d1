// Aggregate popularity_percentile(value float8, percentile float8): percentile_disc by selection.
//
// The state is a growable array of the non-null values in the aggregate's memory context (8 bytes
// a value; allocations may exceed 1 GB), the requested fraction, and whether a NULL fraction was
// seen. The final function selects the k-th value in linear time (core::select_percentile_disc),
// which only permutes the array: the multiset of values, i.e. the logical state, is unchanged, so
// the final function is declared READ_ONLY and states can be shared and used in window frames.
#include "../core/percentile.hpp"

#include "guard.hpp"
#include "settings.hpp"

extern "C" {
#include "libpq/pqformat.h"
}

#include <cstdint>
#include <cstring>

using namespace popularity;

namespace {

struct PercentileState {
    double *values;
    std::uint64_t count;
    std::uint64_t capacity;
    double fraction;
    bool has_fraction;
    bool null_fraction; // a NULL fraction makes the result NULL, as with percentile_disc
};

constexpr std::uint64_t kInitialCapacity = 1024;

MemoryContext aggregate_context(FunctionCallInfo fcinfo, const char *function_name) {
    MemoryContext context;
    if (!AggCheckCallContext(fcinfo, &context)) {
        throw pg::SqlError(ERRCODE_FEATURE_NOT_SUPPORTED,
                           pg::strprintf("%s called in non-aggregate context", function_name));
    }
    return context;
}

PercentileState *new_state(MemoryContext context) {
    auto *state =
        static_cast<PercentileState *>(MemoryContextAllocZero(context, sizeof(PercentileState)));
    return state;
}

void reserve(PercentileState *state, MemoryContext context, std::uint64_t needed) {
    if (needed <= state->capacity) {
        return;
    }
    std::uint64_t capacity = state->capacity == 0 ? kInitialCapacity : state->capacity;
    while (capacity < needed) {
        capacity *= 2;
    }
    const Size bytes = static_cast<Size>(capacity) * sizeof(double);
    state->values = state->values == nullptr
                        ? static_cast<double *>(MemoryContextAllocHuge(context, bytes))
                        : static_cast<double *>(repalloc_huge(state->values, bytes));
    state->capacity = capacity;
}

void set_fraction(PercentileState *state, double fraction) {
    if (state->has_fraction) {
        if (state->fraction != fraction) {
            throw pg::SqlError(
                ERRCODE_INVALID_PARAMETER_VALUE,
                "popularity_percentile needs the same percentile for every row of a group",
                pg::strprintf("Percentiles %g and %g were given in one group.", state->fraction,
                              fraction),
                "Pass a constant, or group by the percentile.");
        }
        return;
    }
    core::check_percentile_fraction(fraction);
    state->fraction = fraction;
    state->has_fraction = true;
}

} // namespace

// sfunc(state internal, value float8, percentile float8) -> internal; not strict.
POPULARITY_FUNCTION(popularity_percentile_transition) {
    MemoryContext context = aggregate_context(fcinfo, "popularity_percentile_transition");
    auto *state = PG_ARGISNULL(0) ? new_state(context)
                                  : reinterpret_cast<PercentileState *>(PG_GETARG_POINTER(0));
    if (PG_ARGISNULL(2)) {
        state->null_fraction = true;
    } else {
        set_fraction(state, PG_GETARG_FLOAT8(2));
    }
    if (!PG_ARGISNULL(1)) {
        reserve(state, context, state->count + 1);
        state->values[state->count++] = PG_GETARG_FLOAT8(1);
    }
    PG_RETURN_POINTER(state);
}

// finalfunc(state internal) -> float8
POPULARITY_FUNCTION(popularity_percentile_final) {
    if (PG_ARGISNULL(0)) {
        PG_RETURN_NULL();
    }
    auto *state = reinterpret_cast<PercentileState *>(PG_GETARG_POINTER(0));
    if (state->null_fraction || !state->has_fraction || state->count == 0) {
        PG_RETURN_NULL();
    }
    PG_RETURN_FLOAT8(core::select_percentile_disc(state->values, state->count, state->fraction));
}

// combinefunc(state internal, other internal) -> internal; not strict.
POPULARITY_FUNCTION(popularity_percentile_combine) {
    MemoryContext context = aggregate_context(fcinfo, "popularity_percentile_combine");
    if (PG_ARGISNULL(1)) {
        if (PG_ARGISNULL(0)) {
            PG_RETURN_NULL();
        }
        PG_RETURN_POINTER(PG_GETARG_POINTER(0));
    }
    auto *other = reinterpret_cast<PercentileState *>(PG_GETARG_POINTER(1));
    auto *state = PG_ARGISNULL(0) ? new_state(context)
                                  : reinterpret_cast<PercentileState *>(PG_GETARG_POINTER(0));
    state->null_fraction = state->null_fraction || other->null_fraction;
    if (other->has_fraction) {
        set_fraction(state, other->fraction);
    }
    if (other->count > 0) {
        reserve(state, context, state->count + other->count);
        std::memcpy(state->values + state->count, other->values, other->count * sizeof(double));
        state->count += other->count;
    }
    PG_RETURN_POINTER(state);
}

namespace {
// Serialized form: uint64 count, float8 fraction, uint8 flags (network byte order), then either
// the count values as raw native doubles, or (flag kRuns) uint64 nruns, nruns doubles and nruns
// uint64 counts of the sorted runs of equal values. States only travel between processes of one
// server (parallel workers), never to disk or another machine, so native byte order is fine;
// runs keep large states of tied counts far below the 1 GB limit of a bytea.
constexpr int kHasFraction = 1;
constexpr int kNullFraction = 2;
constexpr int kRuns = 4;
constexpr int kHeaderBytes = 17;
constexpr Size kMaxSerialized = MaxAllocSize - 1024;

[[noreturn]] void state_too_large(std::uint64_t count, std::uint64_t runs) {
    throw pg::SqlError(ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                       "popularity_percentile partial state is too large to pass between "
                       "parallel workers",
                       pg::strprintf("A worker holds %llu values in %llu distinct values; a state "
                                     "travels as at most 1 GB.",
                                     static_cast<unsigned long long>(count),
                                     static_cast<unsigned long long>(runs)),
                       "Run this query with SET max_parallel_workers_per_gather = 0.");
}

void corrupted(const char *why) {
    throw pg::SqlError(ERRCODE_DATA_CORRUPTED, "invalid popularity_percentile state", why);
}
} // namespace

// serialfunc(state internal) -> bytea; strict.
POPULARITY_FUNCTION(popularity_percentile_serialize) {
    aggregate_context(fcinfo, "popularity_percentile_serialize");
    auto *state = reinterpret_cast<PercentileState *>(PG_GETARG_POINTER(0));
    const int flags =
        (state->has_fraction ? kHasFraction : 0) | (state->null_fraction ? kNullFraction : 0);
    const bool as_runs =
        state->count > static_cast<std::uint64_t>(pg::percentile_compact_threshold) ||
        kHeaderBytes + state->count * sizeof(double) > kMaxSerialized;
    StringInfoData buffer;
    pq_begintypsend(&buffer);
    pq_sendint64(&buffer, static_cast<int64>(state->count));
    pq_sendfloat8(&buffer, state->fraction);
    if (!as_runs) {
        pq_sendbyte(&buffer, flags);
        enlargeStringInfo(&buffer, static_cast<int>(state->count * sizeof(double)));
        appendBinaryStringInfoNT(&buffer, reinterpret_cast<const char *>(state->values),
                                 static_cast<int>(state->count * sizeof(double)));
        PG_RETURN_BYTEA_P(pq_endtypsend(&buffer));
    }
    // The state's array may be reordered: it holds a multiset.
    const std::size_t runs = core::sort_and_count_runs(state->values, state->count);
    const Size run_bytes = runs * (sizeof(double) + sizeof(std::uint64_t));
    if (kHeaderBytes + sizeof(std::uint64_t) + run_bytes > kMaxSerialized) {
        state_too_large(state->count, runs);
    }
    elog(DEBUG2, "popularity_percentile: a partial state of %llu values travels as %llu runs",
         static_cast<unsigned long long>(state->count), static_cast<unsigned long long>(runs));
    pq_sendbyte(&buffer, flags | kRuns);
    pq_sendint64(&buffer, static_cast<int64>(runs));
    // Written into aligned scratch arrays, then appended (the buffer offset is not aligned).
    auto *run_values = static_cast<double *>(
        palloc_extended(Max(runs, static_cast<std::size_t>(1)) * sizeof(double), MCXT_ALLOC_HUGE));
    auto *run_counts = static_cast<std::uint64_t *>(palloc_extended(
        Max(runs, static_cast<std::size_t>(1)) * sizeof(std::uint64_t), MCXT_ALLOC_HUGE));
    core::write_runs(state->values, state->count, run_values, run_counts);
    appendBinaryStringInfoNT(&buffer, reinterpret_cast<const char *>(run_values),
                             static_cast<int>(runs * sizeof(double)));
    appendBinaryStringInfoNT(&buffer, reinterpret_cast<const char *>(run_counts),
                             static_cast<int>(runs * sizeof(std::uint64_t)));
    pfree(run_values);
    pfree(run_counts);
    PG_RETURN_BYTEA_P(pq_endtypsend(&buffer));
}

// deserialfunc(bytes bytea, internal) -> internal; strict.
POPULARITY_FUNCTION(popularity_percentile_deserialize) {
    MemoryContext context = aggregate_context(fcinfo, "popularity_percentile_deserialize");
    bytea *bytes = PG_GETARG_BYTEA_PP(0);
    const int length = VARSIZE_ANY_EXHDR(bytes);
    if (length < kHeaderBytes) {
        corrupted("The state is shorter than its header.");
    }
    StringInfoData buffer;
    buffer.data = VARDATA_ANY(bytes);
    buffer.len = length;
    buffer.maxlen = 0;
    buffer.cursor = 0;
    const auto count = static_cast<std::uint64_t>(pq_getmsgint64(&buffer));
    PercentileState *state = new_state(context);
    state->fraction = pq_getmsgfloat8(&buffer);
    const int flags = pq_getmsgbyte(&buffer);
    state->has_fraction = (flags & kHasFraction) != 0;
    state->null_fraction = (flags & kNullFraction) != 0;
    const std::uint64_t rest = static_cast<std::uint64_t>(length - kHeaderBytes);
    if ((flags & kRuns) == 0) {
        if (rest != count * sizeof(double)) {
            corrupted("The number of values does not match the state's size.");
        }
        if (count > 0) {
            reserve(state, context, count);
            std::memcpy(state->values, buffer.data + buffer.cursor, count * sizeof(double));
        }
        state->count = count;
        PG_RETURN_POINTER(state);
    }
    if (rest < sizeof(std::uint64_t)) {
        corrupted("The state has no run count.");
    }
    const auto runs = static_cast<std::uint64_t>(pq_getmsgint64(&buffer));
    if (rest - sizeof(std::uint64_t) != runs * (sizeof(double) + sizeof(std::uint64_t))) {
        corrupted("The number of runs does not match the state's size.");
    }
    const char *run_values = buffer.data + buffer.cursor;
    const char *run_counts = run_values + runs * sizeof(double);
    std::uint64_t total = 0;
    for (std::uint64_t r = 0; r < runs; ++r) {
        std::uint64_t n;
        std::memcpy(&n, run_counts + r * sizeof n, sizeof n);
        total += n;
    }
    if (total != count) {
        corrupted("The runs do not add up to the state's number of values.");
    }
    if (count > 0) {
        reserve(state, context, count);
        std::uint64_t at = 0;
        for (std::uint64_t r = 0; r < runs; ++r) {
            double v;
            std::uint64_t n;
            std::memcpy(&v, run_values + r * sizeof v, sizeof v);
            std::memcpy(&n, run_counts + r * sizeof n, sizeof n);
            for (std::uint64_t i = 0; i < n; ++i) {
                state->values[at++] = v;
            }
        }
    }
    state->count = count;
    PG_RETURN_POINTER(state);
}
