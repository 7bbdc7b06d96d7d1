// Bytewise lookup of a row's provider among a handful of configured ones, for the C++ table scans
// (refresh batches, the constants pass): records with `name` and `name_length` members, sorted
// once, then found by binary search. Plain data only: nothing here allocates or raises.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>

namespace popularity::pg {

inline int compare_names(const char *a, int a_length, const char *b, int b_length) {
    const int c = std::memcmp(a, b, static_cast<std::size_t>(std::min(a_length, b_length)));
    return c != 0 ? c : a_length - b_length;
}

template <typename Record> void sort_by_name(Record *records, int count) {
    std::sort(records, records + count, [](const Record &x, const Record &y) {
        return compare_names(x.name, x.name_length, y.name, y.name_length) < 0;
    });
}

// The record named `name` in records sorted by sort_by_name, or nullptr.
template <typename Record>
Record *find_by_name(Record *records, int count, const char *name, int length) {
    int low = 0;
    int high = count - 1;
    while (low <= high) {
        const int mid = low + (high - low) / 2;
        const int c = compare_names(records[mid].name, records[mid].name_length, name, length);
        if (c == 0) {
            return &records[mid];
        }
        if (c < 0) {
            low = mid + 1;
        } else {
            high = mid - 1;
        }
    }
    return nullptr;
}

} // namespace popularity::pg
