#include "constants_table.hpp"

#include <gtest/gtest.h>

#include <string>

using popularity::core::ConstantsTable;

TEST(ConstantsTable, FindsByMediaTypeAndProvider) {
    ConstantsTable table;
    table.add("image", "flickr", "views", 4806.0);
    table.add("audio", "flickr", "listens", 3.0);
    table.add("image", "nappy", "downloads", std::nullopt);
    ASSERT_NE(table.find("image", "flickr"), nullptr);
    EXPECT_EQ(table.find("image", "flickr")->metric, "views");
    EXPECT_EQ(*table.find("image", "flickr")->constant, 4806.0);
    EXPECT_EQ(table.find("audio", "flickr")->metric, "listens");
    EXPECT_FALSE(table.find("image", "nappy")->constant.has_value());
    EXPECT_EQ(table.find("image", "met"), nullptr);
    EXPECT_EQ(table.find("video", "flickr"), nullptr);
}

TEST(ConstantsTable, KeysDoNotCollide) {
    ConstantsTable table;
    table.add("ab", "c", "m1", 1.0);
    EXPECT_EQ(table.find("a", "bc"), nullptr);
    EXPECT_NE(table.find("ab", "c"), nullptr);
}

TEST(ConstantsTable, MemoIsInvalidatedByChanges) {
    ConstantsTable table;
    table.add("image", "flickr", "views", 1.0);
    EXPECT_EQ(*table.find("image", "flickr")->constant, 1.0);
    EXPECT_EQ(*table.find("image", "flickr")->constant, 1.0); // memo hit
    for (int i = 0; i < 1000; ++i) {                          // force rehashing
        table.add("image", "p" + std::to_string(i), "views", i);
    }
    table.add("image", "flickr", "views", 2.0);
    EXPECT_EQ(*table.find("image", "flickr")->constant, 2.0);
    table.clear();
    EXPECT_EQ(table.find("image", "flickr"), nullptr);
    EXPECT_EQ(table.size(), 0u);
}

TEST(ConstantsTable, MemoAnswersOnlyItsOwnKey) {
    ConstantsTable table;
    table.add("image", "flickr", "views", 1.0);
    table.add("audio", "flickr", "listens", 3.0);
    ASSERT_NE(table.find("image", "flickr"), nullptr);
    EXPECT_EQ(table.find("image", "flick"), nullptr);   // a prefix of the memo's provider
    EXPECT_EQ(table.find("image", "flickr2"), nullptr); // the memo's provider is a prefix
    EXPECT_EQ(table.find("audio", "flickr")->metric, "listens");
    EXPECT_EQ(table.find("image", "flickr")->metric, "views");
    EXPECT_EQ(table.find("video", "flickr"), nullptr);
}

TEST(ConstantsTable, LookupsStayRightWhileTheTableGrows) {
    ConstantsTable table;
    table.add("image", "flickr", "views", 1.0);
    const auto *entry = table.find("image", "flickr");
    for (int i = 0; i < 1000; ++i) { // rehashes the provider map many times
        table.add("image", "p" + std::to_string(i), "views", i);
        table.add("m" + std::to_string(i % 7), "flickr", "views", -i);
    }
    EXPECT_EQ(table.find("image", "flickr"), entry);
    EXPECT_EQ(*table.find("image", "flickr")->constant, 1.0);
    EXPECT_EQ(table.size(), 1u + 1000u + 7u);
    for (int i = 0; i < 1000; ++i) {
        const auto *p = table.find("image", "p" + std::to_string(i));
        ASSERT_NE(p, nullptr);
        EXPECT_EQ(*p->constant, i);
    }
    EXPECT_EQ(*table.find("m3", "flickr")->constant, -997.0); // the last add of a key wins
    table.add("image", "flickr", "downloads", 2.0);
    EXPECT_EQ(table.find("image", "flickr")->metric, "downloads");
    EXPECT_EQ(table.size(), 1u + 1000u + 7u);
}

TEST(ConstantsTable, TagFilteringPerMediaType) {
    ConstantsTable table;
    table.add_tag_filtering("image");
    EXPECT_TRUE(table.filters_tags("image"));
    EXPECT_FALSE(table.filters_tags("audio"));
    table.clear();
    EXPECT_FALSE(table.filters_tags("image"));
}
