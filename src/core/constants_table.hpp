// The per-backend table of scoring constants: (media type, provider) -> metric and constant.
// Filled from popularity.metrics by the PostgreSQL layer, read by the ingestion trigger for every
// row, so a lookup allocates nothing: media types (a handful) are compared in turn, providers are
// hashed as string views, and a lookup of the same key as the previous row (ingestion batches are
// per provider) costs two string comparisons.
#pragma once
#include "no_postgres.hpp"

#include <cstdint>
#include <deque>
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
    std::size_t size() const { return names_.size(); } // one stored name per entry

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

  private:
    struct MediaType {
        std::string name;
        // The keys view the provider names held in `names_`, so that a lookup by string view
        // needs no std::string (C++17 maps have no heterogeneous lookup).
        std::unordered_map<std::string_view, ProviderMetric> providers;
    };

    std::deque<MediaType> media_types_; // a deque: elements keep their address as it grows
    std::deque<std::string> names_;     // the providers' names, at stable addresses
    std::vector<std::string> tag_filtering_;
    // Memo of the last successful lookup. Map nodes keep their address when the map rehashes,
    // so only clear() invalidates it.
    mutable const MediaType *last_media_type_ = nullptr;
    mutable std::string_view last_provider_;
    mutable const ProviderMetric *last_entry_ = nullptr;
};

} // namespace popularity::core
