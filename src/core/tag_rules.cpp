#include "tag_rules.hpp"

#include "error.hpp"

#include <algorithm>

namespace popularity::core {

namespace {

std::vector<std::string> lowered_list(const std::vector<std::string> &entries, bool sorted) {
    std::vector<std::string> out;
    out.reserve(entries.size());
    for (const std::string &entry : entries) {
        out.push_back(to_lower(entry));
    }
    if (sorted) {
        std::sort(out.begin(), out.end());
        out.erase(std::unique(out.begin(), out.end()), out.end());
    }
    return out;
}

bool sorted_contains(const std::vector<std::string> &list, std::string_view value) {
    const auto it =
        std::lower_bound(list.begin(), list.end(), value,
                         [](const std::string &a, std::string_view b) { return a < b; });
    return it != list.end() && *it == value;
}

double min_accuracy_as_double(const std::string &text) {
    // Decimal::parse accepted the text, and Python's float() accepts every such decimal.
    const std::optional<double> value = python_float(text);
    if (!value) {
        throw Error(ErrorCode::invalid_text, "invalid decimal \"" + text + "\"",
                    "A decimal is written as digits with an optional sign and decimal point.");
    }
    return *value;
}

} // namespace

TagRules::TagRules(const TagRuleConfig &config)
    : min_accuracy_(Decimal::parse(config.min_accuracy)),
      min_accuracy_double_(min_accuracy_as_double(config.min_accuracy)),
      filtered_providers_(lowered_list(config.filtered_providers, true)),
      exact_denylist_(lowered_list(config.exact_denylist, true)),
      substring_denylist_(lowered_list(config.substring_denylist, false)),
      machine_labels_(lowered_list(config.machine_labels, true)) {
    // An empty substring is contained in every name: it is kept, and drops every tag, as written.
}

bool TagRules::is_filtered_provider(std::string_view lower_provider) const {
    return sorted_contains(filtered_providers_, lower_provider);
}

bool TagRules::is_exact_denylisted(std::string_view lower_name) const {
    return sorted_contains(exact_denylist_, lower_name);
}

bool TagRules::has_denylisted_substring(std::string_view lower_name) const {
    for (const std::string &entry : substring_denylist_) {
        if (lower_name.find(entry) != std::string_view::npos) {
            return true;
        }
    }
    return false;
}

bool TagRules::is_machine_label(std::string_view lower_name) const {
    return sorted_contains(machine_labels_, lower_name);
}

void TagClassifier::start_record(const TagRules &rules,
                                 std::optional<std::string_view> record_provider) {
    rules_ = &rules;
    has_record_provider_ = record_provider.has_value();
    if (has_record_provider_) {
        record_provider_.assign(record_lowercaser_.lower(*record_provider));
    } else {
        record_provider_.clear();
    }
}

TagVerdict TagClassifier::classify(const TagView &tag) {
    if (!tag.is_object || !tag.name || tag.accuracy == TagView::Accuracy::not_number) {
        return TagVerdict::malformed;
    }
    // Openverse drops a tag when `float(tag["accuracy"]) < 0.90`, in double precision.
    // - A JSON number is compared exactly with the minimum (a numeric). Python would compare the
    //   double nearest to it: the results differ only for a number that is not the minimum but
    //   rounds to the same double, i.e. has 17 or more significant digits and lies within half a
    //   unit in the last place of it (0.8999999999999999999 is dropped here, kept by Openverse).
    // - A JSON string is read as float() reads it and compared in double precision with the double
    //   nearest to the minimum, as Python does: NaN is never below it (kept), "1e999" is infinity
    //   (kept), "-1e999" minus infinity (dropped). A string float() rejects makes Openverse fail
    //   the whole batch; here that one tag is dropped as malformed.
    // - Anything else is malformed (TagView::Accuracy::not_number). Openverse fails on null, arrays
    //   and objects too, but reads true as 1.0 and false as 0.0: left as a known deviation.
    if (tag.accuracy == TagView::Accuracy::number &&
        compare_decimal(tag.accuracy_value, rules_->min_accuracy()) < 0) {
        return TagVerdict::low_accuracy;
    }
    if (tag.accuracy == TagView::Accuracy::text) {
        const std::optional<double> accuracy = float_parser_.parse(tag.accuracy_text);
        if (!accuracy) {
            return TagVerdict::malformed;
        }
        if (*accuracy < rules_->min_accuracy_double()) {
            return TagVerdict::low_accuracy;
        }
    }
    bool machine_generated = false;
    if (tag.provider) {
        const std::string_view provider = lowercaser_.lower(*tag.provider);
        if (rules_->is_filtered_provider(provider)) {
            return TagVerdict::filtered_provider;
        }
        machine_generated = has_record_provider_ && provider != record_provider_;
    }
    const std::string_view name = lowercaser_.lower(*tag.name);
    if (rules_->is_exact_denylisted(name)) {
        return TagVerdict::exact_denylist;
    }
    if (rules_->has_denylisted_substring(name)) {
        return TagVerdict::substring_denylist;
    }
    if (machine_generated && rules_->is_machine_label(name)) {
        return TagVerdict::machine_label;
    }
    return TagVerdict::keep;
}

std::vector<std::size_t> filter_tag_list(const TagRules &rules,
                                         std::optional<std::string_view> record_provider,
                                         const std::vector<TagView> &tags,
                                         TagVerdictCounts *counts) {
    TagClassifier classifier;
    classifier.start_record(rules, record_provider);
    std::vector<std::size_t> kept;
    kept.reserve(tags.size());
    for (std::size_t i = 0; i < tags.size(); ++i) {
        const TagVerdict verdict = classifier.classify(tags[i]);
        if (counts != nullptr) {
            ++(*counts)[static_cast<std::size_t>(verdict)];
        }
        if (verdict == TagVerdict::keep) {
            kept.push_back(i);
        }
    }
    return kept;
}

} // namespace popularity::core
