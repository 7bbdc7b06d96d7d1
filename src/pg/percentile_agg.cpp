// Aggregate popularity_percentile(value float8, percentile float8): percentile_disc by selection.
//
// The state is a growable array of the non-null values in the aggregate's memory context (8 bytes
// a value; allocations may exceed 1 GB), the requested fraction, and whether a NULL fraction was
// seen. The final function selects the k-th value in linear time (core::select_percentile_disc),
// which only permutes the array: the multiset of values, i.e. the logical state, is unchanged, so
// the final function is declared READ_ONLY and states can be shared and used in window frames.
#include "../core/percentile.hpp"

#include "guard.hpp"

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
// Serialized form: uint64 count, float8 fraction, uint8 flags (network byte order), then the count
// values as raw native doubles: states only travel between processes of one server (parallel
// workers), never to disk or another machine, and copying them whole keeps big states cheap.
constexpr int kHasFraction = 1;
constexpr int kNullFraction = 2;
} // namespace

// serialfunc(state internal) -> bytea; strict.
POPULARITY_FUNCTION(popularity_percentile_serialize) {
    aggregate_context(fcinfo, "popularity_percentile_serialize");
    auto *state = reinterpret_cast<PercentileState *>(PG_GETARG_POINTER(0));
    StringInfoData buffer;
    pq_begintypsend(&buffer);
    enlargeStringInfo(&buffer, static_cast<int>(17 + state->count * sizeof(double)));
    pq_sendint64(&buffer, static_cast<int64>(state->count));
    pq_sendfloat8(&buffer, state->fraction);
    pq_sendbyte(&buffer, (state->has_fraction ? kHasFraction : 0) |
                             (state->null_fraction ? kNullFraction : 0));
    appendBinaryStringInfoNT(&buffer, reinterpret_cast<const char *>(state->values),
                             static_cast<int>(state->count * sizeof(double)));
    PG_RETURN_BYTEA_P(pq_endtypsend(&buffer));
}

// deserialfunc(bytes bytea, internal) -> internal; strict.
POPULARITY_FUNCTION(popularity_percentile_deserialize) {
    MemoryContext context = aggregate_context(fcinfo, "popularity_percentile_deserialize");
    bytea *bytes = PG_GETARG_BYTEA_PP(0);
    const int length = VARSIZE_ANY_EXHDR(bytes);
    if (length < 17) {
        throw pg::SqlError(ERRCODE_DATA_CORRUPTED, "invalid popularity_percentile state");
    }
    StringInfoData buffer;
    buffer.data = VARDATA_ANY(bytes);
    buffer.len = length;
    buffer.maxlen = 0;
    buffer.cursor = 0;
    const auto count = static_cast<std::uint64_t>(pq_getmsgint64(&buffer));
    if (count != static_cast<std::uint64_t>(length - 17) / sizeof(double) ||
        (static_cast<std::uint64_t>(length - 17) % sizeof(double)) != 0) {
        throw pg::SqlError(ERRCODE_DATA_CORRUPTED, "invalid popularity_percentile state",
                           pg::strprintf("The state claims %llu values in %d bytes.",
                                         static_cast<unsigned long long>(count), length));
    }
    PercentileState *state = new_state(context);
    state->fraction = pq_getmsgfloat8(&buffer);
    const int flags = pq_getmsgbyte(&buffer);
    state->has_fraction = (flags & kHasFraction) != 0;
    state->null_fraction = (flags & kNullFraction) != 0;
    if (count > 0) {
        reserve(state, context, count);
        std::memcpy(state->values,
                    pq_getmsgbytes(&buffer, static_cast<int>(count * sizeof(double))),
                    count * sizeof(double));
    }
    state->count = count;
    PG_RETURN_POINTER(state);
}
