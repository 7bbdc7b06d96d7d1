#include "constants_table.hpp"

namespace popularity::core {

std::string ConstantsTable::key(std::string_view media_type, std::string_view provider) {
    std::string k;
    k.reserve(media_type.size() + 1 + provider.size());
    k.append(media_type);
    k.push_back('\0'); // cannot occur in a PostgreSQL text value, so keys never collide
    k.append(provider);
    return k;
}

void ConstantsTable::clear() {
    entries_.clear();
    tag_filtering_.clear();
    has_last_ = false;
    last_entry_ = nullptr;
    loaded = false;
}

void ConstantsTable::add(std::string_view media_type, std::string_view provider,
                         std::string_view metric, std::optional<double> constant) {
    entries_[key(media_type, provider)] = ProviderMetric{std::string(metric), constant};
    has_last_ = false; // rehashing may have moved entries
}

const ProviderMetric *ConstantsTable::find(std::string_view media_type,
                                           std::string_view provider) const {
    if (has_last_ && provider == last_provider_ && media_type == last_media_type_) {
        return last_entry_;
    }
    auto it = entries_.find(key(media_type, provider));
    last_entry_ = it == entries_.end() ? nullptr : &it->second;
    last_media_type_.assign(media_type);
    last_provider_.assign(provider);
    has_last_ = true;
    return last_entry_;
}

} // namespace popularity::core
