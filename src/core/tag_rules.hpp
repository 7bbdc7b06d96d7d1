// The tag rules engine: decides, tag by tag, whether a tag is kept or why it is dropped. Exact
// semantics: docs/semantics.md ("Tag filter"), plus the machine-generated label
// exclusions. The PostgreSQL layer (src/pg/tag_filter.cpp) reads jsonb into TagView values without
// copying; this file knows nothing about jsonb.
#pragma once
#include "no_postgres.hpp"

#include "decimal.hpp"
#include "python_float.hpp"
#include "unicode_case.hpp"

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace popularity::core {

// Every verdict, once: why a tag is dropped, in the order the rules are checked (the first that
// applies is reported), as X(identifier, name). The enum TagVerdict, tag_verdict_name, the count
// and popularity._tag_verdicts() (SQL, names in this order) all derive from this list; a rule's
// default lives in TagRuleConfig below (popularity.tag_rule_defaults reads it from the library).
//   keep:               every rule lets the tag through
//   malformed:          not an object, name not a string, or accuracy present but neither a number
//                       nor a string that Python's float() accepts
//   low_accuracy:       accuracy strictly below the minimum confidence
//   filtered_provider:  provider in the filtered provider list (e.g. rekognition)
//   exact_denylist:     lower(name) equals a denylisted name
//   substring_denylist: lower(name) contains a denylisted substring
//   machine_label:      machine-generated label exclusion (tag provider != record provider)
#define POPULARITY_TAG_VERDICTS(X)                                                                 \
    X(keep, "kept")                                                                                \
    X(malformed, "malformed")                                                                      \
    X(low_accuracy, "low_accuracy")                                                                \
    X(filtered_provider, "filtered_provider")                                                      \
    X(exact_denylist, "exact_denylist")                                                            \
    X(substring_denylist, "substring_denylist")                                                    \
    X(machine_label, "machine_label")

#define POPULARITY_TAG_VERDICT_ENUMERATOR(identifier, name) identifier,
enum class TagVerdict { POPULARITY_TAG_VERDICTS(POPULARITY_TAG_VERDICT_ENUMERATOR) };
#undef POPULARITY_TAG_VERDICT_ENUMERATOR

#define POPULARITY_TAG_VERDICT_NAME(identifier, name) name,
// The verdicts' names, indexed by TagVerdict.
inline constexpr const char *kTagVerdictNames[] = {
    POPULARITY_TAG_VERDICTS(POPULARITY_TAG_VERDICT_NAME)};
#undef POPULARITY_TAG_VERDICT_NAME

constexpr std::size_t kTagVerdictCount = sizeof(kTagVerdictNames) / sizeof(kTagVerdictNames[0]);

// The name of a verdict ("kept", "malformed", ...); "unknown" for a value outside the list.
constexpr const char *tag_verdict_name(TagVerdict verdict) {
    const auto index = static_cast<std::size_t>(verdict);
    return index < kTagVerdictCount ? kTagVerdictNames[index] : "unknown";
}

// Rules as configured (any case; lists may repeat entries). Defaults: the reference page.
struct TagRuleConfig {
    std::string min_accuracy = "0.90";
    std::vector<std::string> filtered_providers{"rekognition"};
    std::vector<std::string> exact_denylist{"no person",
                                            "squareformat",
                                            "uploaded:by=flickrmobile",
                                            "uploaded:by=instagram",
                                            "flickriosapp:filter=flamingo",
                                            "by"};
    std::vector<std::string> substring_denylist{"flickriosapp", "uploaded", ":",     "=",
                                                "cc0",          "by-nc",    "by-nd", "by-sa",
                                                "by-nc-nd",     "by-nc-sa", "pdm"};
    std::vector<std::string> machine_labels{};
};

// One tag as read from the document, without copies. Strings are UTF-8.
struct TagView {
    // number: a JSON number; text: a JSON string (read as Python's float() reads it); not_number:
    // anything else (null, a boolean, an array, an object).
    enum class Accuracy { absent, not_number, number, text };

    bool is_object = false;
    std::optional<std::string_view> name;     // nullopt: missing or not a string
    std::optional<std::string_view> provider; // nullopt: missing or not a string
    Accuracy accuracy = Accuracy::absent;
    DecimalView accuracy_value;     // when accuracy == number
    std::string_view accuracy_text; // when accuracy == text (UTF-8)
};

// Compiled rules: every list lower-cased once, exact lists sorted for binary search.
class TagRules {
  public:
    // Throws Error(invalid_text) for a minimum confidence that is not a decimal.
    explicit TagRules(const TagRuleConfig &config);

    DecimalView min_accuracy() const { return min_accuracy_.view(); }
    // The minimum as the double nearest to it (Python's float of it: 0.90 for the default).
    double min_accuracy_double() const { return min_accuracy_double_; }
    bool is_filtered_provider(std::string_view lower_provider) const;
    bool is_exact_denylisted(std::string_view lower_name) const;
    bool has_denylisted_substring(std::string_view lower_name) const;
    bool is_machine_label(std::string_view lower_name) const;

  private:
    Decimal min_accuracy_;
    double min_accuracy_double_;
    std::vector<std::string> filtered_providers_;
    std::vector<std::string> exact_denylist_;
    std::vector<std::string> substring_denylist_;
    std::vector<std::string> machine_labels_;
};

// Applies rules to the tags of one record. Holds lower-casing buffers: reuse one instance (per
// backend) and call start_record() per record, so that classifying allocates nothing after
// warm-up.
class TagClassifier {
  public:
    // record_provider: the record's provider, or nullopt when unknown. Machine-generated label
    // exclusions apply only to tags that have a provider that differs (case-insensitively) from a
    // known record provider.
    void start_record(const TagRules &rules, std::optional<std::string_view> record_provider);
    TagVerdict classify(const TagView &tag);

  private:
    const TagRules *rules_ = nullptr;
    bool has_record_provider_ = false;
    std::string record_provider_; // lower case
    Lowercaser record_lowercaser_;
    Lowercaser lowercaser_;
    PythonFloatParser float_parser_;
};

// Counts per verdict (index = TagVerdict), for reports.
using TagVerdictCounts = std::array<long long, kTagVerdictCount>;

// Classifies a whole list: the indexes of the kept tags, in order, and counts per verdict.
// (The PostgreSQL layer walks jsonb itself; this is the reference loop, used by unit tests.)
std::vector<std::size_t> filter_tag_list(const TagRules &rules,
                                         std::optional<std::string_view> record_provider,
                                         const std::vector<TagView> &tags,
                                         TagVerdictCounts *counts = nullptr);

} // namespace popularity::core
