// The per-backend table of scoring constants: (media type, provider) -> metric and constant.
// Filled from popularity.metrics by the PostgreSQL layer, read by the ingestion trigger for every
// row, so a lookup of the same key as the previous row costs two string comparisons and no
// allocation (ingestion batches are per provider).
#pragma once
#include "no_postgres.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace popularity::core {

struct ProviderMetric {
    std::string metric;
    std::optional<double> constant; // nullopt until the constant has been computed
};

class ConstantsTable {
  public:
    void clear();
    void add(std::string_view media_type, std::string_view provider, std::string_view metric,
             std::optional<double> constant);
    // nullptr when the provider has no metric configured for the media type.
    const ProviderMetric *find(std::string_view media_type, std::string_view provider) const;
    std::size_t size() const { return entries_.size(); }

    // Media types whose ingestion also applies the tag rules.
    void add_tag_filtering(std::string_view media_type) { tag_filtering_.emplace_back(media_type); }
    bool filters_tags(std::string_view media_type) const {
        for (const std::string &m : tag_filtering_) {
            if (m == media_type) {
                return true;
            }
        }
        return false;
    }

    // The shared version this table was loaded at (see src/pg/shared_state.hpp).
    std::uint64_t loaded_version = 0;
    bool loaded = false;

  private:
    static std::string key(std::string_view media_type, std::string_view provider);

    std::unordered_map<std::string, ProviderMetric> entries_;
    std::vector<std::string> tag_filtering_;
    // Memo of the last lookup.
    mutable std::string last_media_type_;
    mutable std::string last_provider_;
    mutable const ProviderMetric *last_entry_ = nullptr;
    mutable bool has_last_ = false;
};

} // namespace popularity::core
