// Discrete percentile with exactly PostgreSQL's percentile_disc semantics, by selection.
#pragma once
#include "no_postgres.hpp"

#include <cstddef>
#include <cstdint>

namespace popularity::core {

// Throws Error(numeric_out_of_range) unless 0 <= p <= 1 (the check percentile_disc makes).
void check_percentile_fraction(double p);

// The 1-based rank percentile_disc returns: k = max(1, ceil(p * n)) with p * n in double precision.
// n must be > 0.
std::uint64_t percentile_disc_rank(std::uint64_t n, double p);

// PostgreSQL's float8 ordering: NaN sorts above every other value and equals itself.
inline bool float8_less(double a, double b) {
    if (b != b) {
        return a == a;
    }
    return a < b;
}

// Returns the k-th smallest of values[0..n) in float8 order, k = percentile_disc_rank(n, p).
// Linear time on average (introselect); reorders the array. n must be > 0.
double select_percentile_disc(double *values, std::size_t n, double p);

// Run-length form of a multiset of doubles (compact partial states of the aggregate): sorts
// values[0..n) in float8 order and returns how many runs of bit-identical values it has.
std::size_t sort_and_count_runs(double *values, std::size_t n);

// Writes the runs of sorted values[0..n) (sorted by sort_and_count_runs) into run_values and
// run_counts, each with room for the number of runs.
void write_runs(const double *values, std::size_t n, double *run_values, std::uint64_t *run_counts);

} // namespace popularity::core
