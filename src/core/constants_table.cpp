#include "constants_table.hpp"

#include "check.hpp"

#include <algorithm>

namespace popularity::core {

void ConstantsTable::clear() {
    media_types_.clear();
    names_.clear();
    tag_filtering_.clear();
    last_media_type_ = nullptr;
    last_entry_ = nullptr;
}

void ConstantsTable::add(std::string_view media_type, std::string_view provider,
                         std::string_view metric, std::optional<double> constant) {
    auto named = std::find_if(media_types_.begin(), media_types_.end(),
                              [&](const MediaType &m) { return m.name == media_type; });
    MediaType &media = named != media_types_.end()
                           ? *named
                           : media_types_.emplace_back(MediaType{std::string(media_type), {}});
    ProviderMetric value{std::string(metric), constant};
    auto it = media.providers.find(provider);
    if (it != media.providers.end()) {
        it->second = std::move(value); // the node stays where it is: a memo of it stays valid
        return;
    }
    const std::string &name = names_.emplace_back(provider);
    const bool inserted = media.providers.emplace(std::string_view(name), std::move(value)).second;
    POPULARITY_CHECK(inserted);
    static_cast<void>(inserted);
}

const ProviderMetric *ConstantsTable::find(std::string_view media_type,
                                           std::string_view provider) const {
    if (last_media_type_ != nullptr && provider == last_provider_ &&
        media_type == last_media_type_->name) {
        return last_entry_;
    }
    auto media = std::find_if(media_types_.begin(), media_types_.end(),
                              [&](const MediaType &m) { return m.name == media_type; });
    if (media == media_types_.end()) {
        return nullptr;
    }
    auto it = media->providers.find(provider);
    if (it == media->providers.end()) {
        return nullptr;
    }
    last_media_type_ = &*media;
    last_provider_ = it->first;
    last_entry_ = &it->second;
    return last_entry_;
}

} // namespace popularity::core
