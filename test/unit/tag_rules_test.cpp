// Unit tests of the tag rules engine: every rule, the reference page's vectors (section 5), Unicode
// case mapping, exact decimal comparison of accuracies, and large lists.
#include "decimal.hpp"
#include "error.hpp"
#include "tag_rules.hpp"
#include "unicode_case.hpp"

#include <gtest/gtest.h>

#include <deque>
#include <optional>
#include <string>
#include <vector>

using namespace popularity::core;

namespace {

// Builds TagViews that point into storage owned by the builder.
class Tags {
  public:
    Tags &tag(std::string name, std::optional<std::string> accuracy = std::nullopt,
              std::optional<std::string> provider = std::nullopt) {
        TagView view;
        view.is_object = true;
        view.name = keep(std::move(name));
        if (provider) {
            view.provider = keep(std::move(*provider));
        }
        if (accuracy) {
            decimals_.push_back(Decimal::parse(*accuracy));
            view.accuracy = TagView::Accuracy::number;
            view.accuracy_value = decimals_.back().view();
        }
        views_.push_back(view);
        return *this;
    }
    // A tag whose accuracy is a JSON string.
    Tags &text_tag(std::string name, std::string accuracy,
                   std::optional<std::string> provider = std::nullopt) {
        TagView view;
        view.is_object = true;
        view.name = keep(std::move(name));
        if (provider) {
            view.provider = keep(std::move(*provider));
        }
        view.accuracy = TagView::Accuracy::text;
        view.accuracy_text = keep(std::move(accuracy));
        views_.push_back(view);
        return *this;
    }
    Tags &raw(TagView view) {
        views_.push_back(view);
        return *this;
    }
    const std::vector<TagView> &views() const { return views_; }

  private:
    std::string_view keep(std::string s) {
        strings_.push_back(std::move(s));
        return strings_.back();
    }
    std::deque<std::string> strings_; // deque: stable addresses
    std::deque<Decimal> decimals_;
    std::vector<TagView> views_;
};

std::vector<std::size_t> kept(const Tags &tags, const TagRuleConfig &config = {},
                              std::optional<std::string_view> provider = std::nullopt) {
    return filter_tag_list(TagRules(config), provider, tags.views());
}

TagVerdict verdict_of(const TagView &tag, const TagRuleConfig &config = {},
                      std::optional<std::string_view> provider = std::nullopt) {
    TagRules rules(config);
    TagClassifier classifier;
    classifier.start_record(rules, provider);
    return classifier.classify(tag);
}

TagVerdict verdict_of_name(std::string name, const TagRuleConfig &config = {}) {
    Tags tags;
    tags.tag(std::move(name));
    return verdict_of(tags.views()[0], config);
}

using Kept = std::vector<std::size_t>;

} // namespace

// --- Reference vectors (openverse-semantics.md, section 5) -------------------------------------

TEST(TagReference, ValidAccuracyUnchanged) {
    Tags tags;
    tags.tag("valid", "0.92");
    EXPECT_EQ(kept(tags), (Kept{0}));
}

TEST(TagReference, LicenseAndMachineryDropped) {
    Tags tags;
    tags.tag("cc0")
        .tag(" cc0")
        .tag("valid", "0.99")
        .tag("valid_no_accuracy")
        .tag("garbage:=metacrap");
    EXPECT_EQ(kept(tags), (Kept{2, 3}));
}

TEST(TagReference, InaccurateDropped) {
    Tags tags;
    tags.tag("inaccurate", "0.5").tag("accurate", "0.999");
    EXPECT_EQ(kept(tags), (Kept{1}));
}

TEST(TagReference, FilteredProviderDropped) {
    Tags tags;
    tags.tag("valid", std::nullopt, "provider1").tag("invalid", std::nullopt, "rekognition");
    EXPECT_EQ(kept(tags), (Kept{0}));
}

// --- Each rule
// ------------------------------------------------------------------------------------

TEST(TagRulesEach, AccuracyThresholdIsInclusive) {
    Tags tags;
    tags.tag("a", "0.90")
        .tag("b", "0.9")
        .tag("c", "0.8999999999999999999999")
        .tag("d", "0.9000")
        .tag("e", "1")
        .tag("f", "0")
        .tag("g", "-0.95")
        .tag("h", "0.90000000000000000001");
    EXPECT_EQ(kept(tags), (Kept{0, 1, 3, 4, 7}));
    EXPECT_EQ(verdict_of(tags.views()[2]), TagVerdict::low_accuracy);
}

TEST(TagRulesEach, ConfigurableMinimum) {
    TagRuleConfig config;
    config.min_accuracy = "0.5";
    Tags tags;
    tags.tag("a", "0.5").tag("b", "0.49");
    EXPECT_EQ(kept(tags, config), (Kept{0}));
    config.min_accuracy = "0";
    EXPECT_EQ(kept(tags, config), (Kept{0, 1}));
}

// Accuracies stored as JSON strings, read as Openverse reads them: float(accuracy) < 0.90.
TEST(TagRulesEach, StringAccuracyAsPythonFloat) {
    Tags tags;
    tags.text_tag("a", "0.98224", "clarifai")       // 0: Openverse's real data
        .text_tag("b", "0.5")                       // 1: low
        .text_tag("c", "0.90")                      // 2: the minimum itself
        .text_tag("d", " 9e-1\n")                   // 3
        .text_tag("e", "0.8999999999999999999")     // 4: float() rounds it to 0.9: kept
        .text_tag("f", "0.89999999999999991")       // 5: the double below 0.9: low
        .text_tag("g", "NaN")                       // 6: never below: kept
        .text_tag("h", "-inf")                      // 7: low
        .text_tag("i", "1e999")                     // 8: inf: kept
        .text_tag("j", "-1e999")                    // 9: -inf: low
        .text_tag("k", "1_0")                       // 10: 10.0
        .text_tag("l", "\xd9\xa0.\xd9\xa9\xd9\xa9") // 11: Arabic-Indic 0.99
        .text_tag("m", "ninety")                    // 12: float() raises: malformed
        .text_tag("n", "")                          // 13: malformed
        .text_tag("o", "1__0")                      // 14: malformed
        .text_tag("p", "0x1p0")                     // 15: malformed
        .text_tag("q", "\x1c"
                       "0.95"); // 16: malformed (not white space to float())
    TagVerdictCounts counts{};
    EXPECT_EQ(filter_tag_list(TagRules(TagRuleConfig{}), std::nullopt, tags.views(), &counts),
              (Kept{0, 2, 3, 4, 6, 8, 10, 11}));
    EXPECT_EQ(counts[static_cast<std::size_t>(TagVerdict::low_accuracy)], 4);
    EXPECT_EQ(counts[static_cast<std::size_t>(TagVerdict::malformed)], 5);
    // A malformed accuracy is reported before any other reason.
    Tags more;
    more.text_tag("cc0", "high", "rekognition").text_tag("cc0", "0.1", "rekognition");
    EXPECT_EQ(verdict_of(more.views()[0]), TagVerdict::malformed);
    EXPECT_EQ(verdict_of(more.views()[1]), TagVerdict::low_accuracy);
}

// A string is compared in double precision with the double nearest to the configured minimum (as
// Python compares float(accuracy) with a float); a JSON number exactly with the minimum.
TEST(TagRulesEach, StringAccuracyAgainstConfiguredMinimum) {
    TagRuleConfig config;
    config.min_accuracy = "0.7"; // the double nearest to 0.7 lies below 0.7
    Tags tags;
    tags.text_tag("a", "0.7")
        .text_tag("b", "0.69999999999999999999") // the same double: not below
        .text_tag("c", "0.6999999999999999")     // a smaller double
        .tag("d", "0.7")
        .tag("e", "0.69999999999999999999"); // exact: below (documented deviation)
    EXPECT_EQ(kept(tags, config), (Kept{0, 1, 3}));
    config.min_accuracy = "0";
    Tags zeros;
    zeros.text_tag("a", "0")
        .text_tag("b", "-0.0")
        .text_tag("c", "-1e-999")
        .text_tag("d", "-1e-300");
    EXPECT_EQ(kept(zeros, config), (Kept{0, 1, 2}));
    config.min_accuracy = "1";
    Tags ones;
    ones.text_tag("a", "1")
        .text_tag("b", "0.99999999999999999")
        .text_tag("c", "0.9999999999999999");
    EXPECT_EQ(kept(ones, config), (Kept{0, 1}));
}

TEST(TagRulesEach, ExactDenylistEveryDefault) {
    for (const char *name :
         {"no person", "squareformat", "by", "NO PERSON", "SquareFormat", "BY"}) {
        EXPECT_EQ(verdict_of_name(name), TagVerdict::exact_denylist) << name;
    }
    // Entries that also contain a denylisted substring are reported as exact matches (first rule).
    EXPECT_EQ(verdict_of_name("uploaded:by=instagram"), TagVerdict::exact_denylist);
    // Not trimmed: " by" is not "by", and contains no denylisted substring.
    EXPECT_EQ(verdict_of_name(" by"), TagVerdict::keep);
    EXPECT_EQ(verdict_of_name("by "), TagVerdict::keep);
    EXPECT_EQ(verdict_of_name("byline"), TagVerdict::keep);
}

TEST(TagRulesEach, SubstringDenylistEveryDefault) {
    for (const char *name : {"xflickriosappx", "Uploaded today", "a:b", "a=b", "my CC0 photo",
                             "by-nc", "BY-ND 4.0", "by-sa", "by-nc-nd", "BY-NC-SA", "PDM"}) {
        EXPECT_EQ(verdict_of_name(name), TagVerdict::substring_denylist) << name;
    }
    EXPECT_EQ(verdict_of_name("by nc"), TagVerdict::keep);
    EXPECT_EQ(verdict_of_name("cc-0"), TagVerdict::keep);
}

TEST(TagRulesEach, FilteredProviderIsCaseInsensitive) {
    Tags tags;
    tags.tag("dog", "0.99", "Rekognition").tag("dog", "0.99", "clarifai");
    EXPECT_EQ(kept(tags), (Kept{1}));
    EXPECT_EQ(verdict_of(tags.views()[0]), TagVerdict::filtered_provider);
}

TEST(TagRulesEach, MachineLabelsOnlyFromOtherProviders) {
    TagRuleConfig config;
    config.machine_labels = {"Adult", "boy", "BRIDE"};
    Tags tags;
    tags.tag("adult", "0.99", "clarifai")       // 0: machine-generated, excluded
        .tag("Adult", std::nullopt, "flickr")   // 1: the record's own provider, kept
        .tag("BOY", std::nullopt, "FLICKR")     // 2: same provider, case-insensitively, kept
        .tag("Bride")                           // 3: no tag provider, kept
        .tag("bride", "0.95", "clarifai")       // 4: excluded
        .tag("bridegroom", "0.95", "clarifai"); // 5: exact label match only, kept
    EXPECT_EQ(kept(tags, config, "flickr"), (Kept{1, 2, 3, 5}));
    EXPECT_EQ(verdict_of(tags.views()[0], config, "flickr"), TagVerdict::machine_label);
    // Unknown record provider: no tag can be shown to be machine-generated.
    EXPECT_EQ(kept(tags, config, std::nullopt), (Kept{0, 1, 2, 3, 4, 5}));
}

TEST(TagRulesEach, Malformed) {
    TagView not_object;
    EXPECT_EQ(verdict_of(not_object), TagVerdict::malformed);
    TagView no_name;
    no_name.is_object = true;
    EXPECT_EQ(verdict_of(no_name), TagVerdict::malformed);
    TagView bad_accuracy;
    bad_accuracy.is_object = true;
    bad_accuracy.name = "dog";
    bad_accuracy.accuracy = TagView::Accuracy::not_number;
    EXPECT_EQ(verdict_of(bad_accuracy), TagVerdict::malformed);
}

TEST(TagRulesEach, RuleOrderReportsFirstReason) {
    Tags tags;
    tags.tag("cc0", "0.1", "rekognition").tag("cc0", "0.95", "rekognition").tag("cc0", "0.95");
    EXPECT_EQ(verdict_of(tags.views()[0]), TagVerdict::low_accuracy);
    EXPECT_EQ(verdict_of(tags.views()[1]), TagVerdict::filtered_provider);
    EXPECT_EQ(verdict_of(tags.views()[2]), TagVerdict::substring_denylist);
    TagVerdictCounts counts{};
    filter_tag_list(TagRules(TagRuleConfig{}), std::nullopt, tags.views(), &counts);
    EXPECT_EQ(counts[static_cast<std::size_t>(TagVerdict::low_accuracy)], 1);
    EXPECT_EQ(counts[static_cast<std::size_t>(TagVerdict::filtered_provider)], 1);
    EXPECT_EQ(counts[static_cast<std::size_t>(TagVerdict::substring_denylist)], 1);
    EXPECT_EQ(counts[static_cast<std::size_t>(TagVerdict::keep)], 0);
}

TEST(TagRulesEach, ConfigListsAreLowerCasedOnce) {
    TagRuleConfig config;
    config.exact_denylist = {"ÉTÉ"};
    config.substring_denylist = {"FOO"};
    config.filtered_providers = {"CLARIFAI"};
    EXPECT_EQ(verdict_of_name("été", config), TagVerdict::exact_denylist);
    EXPECT_EQ(verdict_of_name("xfooy", config), TagVerdict::substring_denylist);
    Tags tags;
    tags.tag("x", std::nullopt, "clarifai");
    EXPECT_EQ(verdict_of(tags.views()[0], config), TagVerdict::filtered_provider);
    EXPECT_EQ(verdict_of_name("cc0", config), TagVerdict::keep); // defaults replaced, not merged
}

TEST(TagRulesEach, EmptyListsKeepEverything) {
    TagRuleConfig config;
    config.min_accuracy = "0";
    config.filtered_providers.clear();
    config.exact_denylist.clear();
    config.substring_denylist.clear();
    Tags tags;
    tags.tag("cc0", "0.01", "rekognition").tag("by").tag("a:b");
    EXPECT_EQ(kept(tags, config), (Kept{0, 1, 2}));
}

TEST(TagRulesEach, BadMinimumIsAnError) {
    TagRuleConfig config;
    config.min_accuracy = "ninety";
    EXPECT_THROW(TagRules{config}, Error);
}

// --- Unicode case
// ----------------------------------------------------------------------------------

TEST(TagUnicode, Lowercasing) {
    EXPECT_EQ(to_lower("CC0"), "cc0");
    EXPECT_EQ(to_lower("İ"), "i\xCC\x87");         // U+0130 -> i + U+0307 (full mapping)
    EXPECT_EQ(to_lower("I"), "i");                 // root locale, not Turkish
    EXPECT_EQ(to_lower("ß"), "ß");                 // lower case already
    EXPECT_EQ(to_lower("ẞ"), "ß");                 // U+1E9E capital sharp s
    EXPECT_EQ(to_lower("ΣΑΣ"), "σας");             // final sigma in context
    EXPECT_EQ(to_lower("E\xCC\x81"), "e\xCC\x81"); // combining acute kept, base lowered
    EXPECT_EQ(to_lower("\xE2\x84\xAA"), "k");      // KELVIN SIGN -> ASCII k
    EXPECT_EQ(to_lower("ＣＣ0"), "ｃｃ0");         // fullwidth stays fullwidth
    EXPECT_EQ(to_lower(""), "");
    EXPECT_EQ(to_lower("a\xFF"
                       "B"),
              "a\xEF\xBF\xBD"
              "b"); // ill-formed byte -> U+FFFD
}

TEST(TagUnicode, AsciiFastPathReturnsInput) {
    Lowercaser lowercaser;
    const std::string text = "already lower";
    EXPECT_EQ(lowercaser.lower(text).data(), text.data());
}

TEST(TagUnicode, MatchingUsesFullLowercasing) {
    EXPECT_EQ(verdict_of_name("CC0"), TagVerdict::substring_denylist);
    EXPECT_EQ(verdict_of_name("cC0"), TagVerdict::substring_denylist);
    EXPECT_EQ(verdict_of_name("ＣＣ0"), TagVerdict::keep);
    EXPECT_EQ(verdict_of_name("PDM\xCC\x81"), TagVerdict::substring_denylist); // "pdm" + mark
    EXPECT_EQ(verdict_of_name("\xE2\x84\xAA"), TagVerdict::keep);
    TagRuleConfig config;
    config.exact_denylist = {"i\xCC\x87stanbul"};
    EXPECT_EQ(verdict_of_name("İSTANBUL", config), TagVerdict::exact_denylist);
    EXPECT_EQ(verdict_of_name("ISTANBUL", config), TagVerdict::keep);
    config.exact_denylist = {"STRASSE", "straße"};
    EXPECT_EQ(verdict_of_name("STRAẞE", config), TagVerdict::exact_denylist);
    EXPECT_EQ(verdict_of_name("Strasse", config), TagVerdict::exact_denylist);
    config.exact_denylist = {"café"}; // precomposed é; no normalization is applied
    EXPECT_EQ(verdict_of_name("CAFÉ", config), TagVerdict::exact_denylist);
    EXPECT_EQ(verdict_of_name("CAFE\xCC\x81", config), TagVerdict::keep);
}

// --- Decimals
// -------------------------------------------------------------------------------------

TEST(TagDecimal, CompareExactly) {
    auto cmp = [](const char *a, const char *b) {
        return compare_decimal(Decimal::parse(a).view(), Decimal::parse(b).view());
    };
    EXPECT_EQ(cmp("0.9", "0.90"), 0);
    EXPECT_EQ(cmp("0.89999999999999999999", "0.9"), -1);
    EXPECT_EQ(cmp("0.90000000000000000001", "0.9"), 1);
    EXPECT_EQ(cmp("-0", "0"), 0);
    EXPECT_EQ(cmp("-0.1", "0"), -1);
    EXPECT_EQ(cmp("-2", "-1"), -1);
    EXPECT_EQ(cmp("10000", "9999.9999"), 1);
    EXPECT_EQ(cmp("00012.5000", "12.5"), 0);
    EXPECT_EQ(cmp(".5", "0.5"), 0);
    EXPECT_EQ(cmp("1", "0.99999"), 1);
    EXPECT_THROW(Decimal::parse(""), Error);
    EXPECT_THROW(Decimal::parse("1e3"), Error);
    EXPECT_THROW(Decimal::parse("."), Error);
    EXPECT_THROW(Decimal::parse("NaN"), Error);
}

// --- Sizes
// ----------------------------------------------------------------------------------------

TEST(TagSizes, EmptyList) {
    Tags tags;
    EXPECT_TRUE(kept(tags).empty());
}

TEST(TagSizes, TenThousandTags) {
    Tags tags;
    Kept expected;
    for (std::size_t i = 0; i < 10000; ++i) {
        if (i % 3 == 0) {
            tags.tag("tag " + std::to_string(i), "0.95", "clarifai");
            expected.push_back(i);
        } else if (i % 3 == 1) {
            tags.tag("CC0 " + std::to_string(i));
        } else {
            tags.tag("low " + std::to_string(i), "0.5");
        }
    }
    TagVerdictCounts counts{};
    EXPECT_EQ(filter_tag_list(TagRules(TagRuleConfig{}), "flickr", tags.views(), &counts),
              expected);
    EXPECT_EQ(counts[0], 3334);
    EXPECT_EQ(counts[static_cast<std::size_t>(TagVerdict::substring_denylist)], 3333);
    EXPECT_EQ(counts[static_cast<std::size_t>(TagVerdict::low_accuracy)], 3333);
}

// --- Verdict identity ---------------------------------------------------------------------------

// One definition (POPULARITY_TAG_VERDICTS): the enum, the names and the count agree, names are
// unique, and every verdict has an example here, so a new rule fails this test until it has one.
TEST(TagVerdicts, OneDefinition) {
    static_assert(static_cast<std::size_t>(TagVerdict::keep) == 0);
    static_assert(static_cast<std::size_t>(TagVerdict::machine_label) + 1 == kTagVerdictCount);
    static_assert(std::string_view(tag_verdict_name(TagVerdict::low_accuracy)) == "low_accuracy");
    EXPECT_STREQ(tag_verdict_name(static_cast<TagVerdict>(kTagVerdictCount)), "unknown");
    for (std::size_t i = 0; i < kTagVerdictCount; ++i) {
        for (std::size_t j = i + 1; j < kTagVerdictCount; ++j) {
            EXPECT_STRNE(kTagVerdictNames[i], kTagVerdictNames[j]);
        }
    }

    TagRuleConfig config; // the defaults, plus one machine label
    config.machine_labels = {"person"};
    Tags tags;
    std::vector<std::pair<std::string, std::optional<std::string_view>>> expected;
    const auto add = [&](const char *verdict, std::optional<std::string_view> record_provider) {
        expected.emplace_back(verdict, record_provider);
    };
    tags.tag("cat", "0.95"), add("kept", std::nullopt);
    tags.text_tag("cat", "0x1"), add("malformed", std::nullopt);
    tags.tag("cat", "0.5"), add("low_accuracy", std::nullopt);
    tags.tag("cat", "0.99", "Rekognition"), add("filtered_provider", std::nullopt);
    tags.tag("No Person"), add("exact_denylist", std::nullopt);
    tags.tag("uploaded:by=me"), add("substring_denylist", std::nullopt);
    tags.tag("person", "0.99", "clarifai"), add("machine_label", "flickr");
    ASSERT_EQ(expected.size(), kTagVerdictCount) << "a verdict without an example";
    for (std::size_t i = 0; i < kTagVerdictCount; ++i) {
        EXPECT_EQ(expected[i].first, kTagVerdictNames[i]);
        EXPECT_STREQ(tag_verdict_name(verdict_of(tags.views()[i], config, expected[i].second)),
                     kTagVerdictNames[i]);
    }
}

// The built-in rules are Openverse's (popularity.tag_rule_defaults reads them from here).
TEST(TagVerdicts, DefaultsAreOpenverses) {
    const TagRuleConfig defaults;
    EXPECT_EQ(defaults.min_accuracy, "0.90");
    EXPECT_EQ(defaults.filtered_providers, (std::vector<std::string>{"rekognition"}));
    EXPECT_EQ(
        defaults.exact_denylist,
        (std::vector<std::string>{"no person", "squareformat", "uploaded:by=flickrmobile",
                                  "uploaded:by=instagram", "flickriosapp:filter=flamingo", "by"}));
    EXPECT_EQ(defaults.substring_denylist,
              (std::vector<std::string>{"flickriosapp", "uploaded", ":", "=", "cc0", "by-nc",
                                        "by-nd", "by-sa", "by-nc-nd", "by-nc-sa", "pdm"}));
    EXPECT_TRUE(defaults.machine_labels.empty());
}
