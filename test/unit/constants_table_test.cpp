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

TEST(ConstantsTable, TagFilteringPerMediaType) {
    ConstantsTable table;
    table.add_tag_filtering("image");
    EXPECT_TRUE(table.filters_tags("image"));
    EXPECT_FALSE(table.filters_tags("audio"));
    table.clear();
    EXPECT_FALSE(table.filters_tags("image"));
}
