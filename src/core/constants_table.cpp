#include "constants_table.hpp"

namespace popularity::core {

void ConstantsTable::clear() {
    media_types_.clear();
    names_.clear();
    size_ = 0;
    tag_filtering_.clear();
    last_media_type_ = nullptr;
    last_entry_ = nullptr;
    loaded = false;
}

const ConstantsTable::MediaType *ConstantsTable::media_type_named(std::string_view name) const {
    for (const MediaType &m : media_types_) {
        if (m.name == name) {
            return &m;
        }
    }
    return nullptr;
}

void ConstantsTable::add(std::string_view media_type, std::string_view provider,
                         std::string_view metric, std::optional<double> constant) {
    MediaType *media = nullptr;
    for (MediaType &m : media_types_) {
        if (m.name == media_type) {
            media = &m;
            break;
        }
    }
    if (media == nullptr) {
        media = &media_types_.emplace_back(MediaType{std::string(media_type), {}});
    }
    ProviderMetric value{std::string(metric), constant};
    auto it = media->providers.find(provider);
    if (it != media->providers.end()) {
        it->second = std::move(value); // the node stays where it is: a memo of it stays valid
        return;
    }
    const std::string &name = names_.emplace_back(provider);
    media->providers.emplace(std::string_view(name), std::move(value));
    ++size_;
}

const ProviderMetric *ConstantsTable::find(std::string_view media_type,
                                           std::string_view provider) const {
    if (last_media_type_ != nullptr && provider == last_provider_ &&
        media_type == last_media_type_->name) {
        return last_entry_;
    }
    const MediaType *media = media_type_named(media_type);
    if (media == nullptr) {
        return nullptr;
    }
    auto it = media->providers.find(provider);
    if (it == media->providers.end()) {
        return nullptr;
    }
    last_media_type_ = media;
    last_provider_ = it->first;
    last_entry_ = &it->second;
    return last_entry_;
}

} // namespace popularity::core
