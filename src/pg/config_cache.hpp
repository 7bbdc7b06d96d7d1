// The configuration a backend caches, and the one way it learns that the configuration changed.
//
// What is cached (per backend, loaded on first use, reloaded on the first use after a change):
//   - the scoring constants: popularity.metrics (media type, provider -> metric, constant) and
//     which media types filter tags at ingestion (popularity.media_types);
//   - the compiled tag rules of every media type (popularity.effective_tag_rules: tag_rules,
//     media_types and the built-in defaults);
//   - the column positions of the media table the ingestion trigger last fired on.
//
// How a change is learnt, with or without shared_preload_libraries: every configuration table
// (metrics, media_types, tag_rules) has a statement trigger, popularity._config_changed(), that
// queues a relcache invalidation of that table. PostgreSQL sends it to every backend of the
// database when the transaction commits, after the commit is visible to new snapshots, replays it
// locally after each command of the changing transaction, and on abort (so a rolled-back change
// is forgotten). One relcache callback counts these invalidations (one generation for all the
// configuration); it also forgets the media table's column positions when that table's definition
// changes. The one "is my cache current" check reads PostgreSQL's invalidation queue (one unlocked
// flag test when it is empty) and compares the generation a part was loaded at with the current
// one. Loads read with the latest snapshot, so a change whose invalidation was read is always
// visible: a row written after another session committed a constant uses it, even within one
// statement.
#pragma once

#include "../core/constants_table.hpp"
#include "../core/tag_rules.hpp"

#include "pg_includes.hpp"

extern "C" {
#include "utils/relcache.h"
}

#include <optional>
#include <string_view>

namespace popularity::pg::config {

// The scoring constants, reloaded first when the configuration changed since they were loaded.
// The reference (and the ProviderMetric pointers found in it) stay valid until the next call.
// Throws SqlError / PgError.
const core::ConstantsTable &constants();

// The compiled tag rules of a media type, or the global rules for nullopt; reloaded first when the
// configuration changed. Throws SqlError (42704) for a media type that is not registered. The
// reference stays valid until the next call.
const core::TagRules &tag_rules(std::optional<std::string_view> media_type);

// Column positions of a registered media table, for its current tuple descriptor.
struct MediaColumns {
    Oid relid = InvalidOid;
    TupleDesc desc = nullptr;
    int natts = 0;
    int provider = 0;
    int meta_data = 0;
    int score = 0;
    int tags = 0; // 0 when the table has no jsonb tags column
    // The score is the last column, a by-value float8: rows that have every column can take the
    // ingestion trigger's byte-copy path.
    bool score_last = false;
};

// The positions in `rel` (looked up again after any change of its definition). Throws SqlError
// (42703, 42804) naming a missing or mistyped column. Valid until the next call.
const MediaColumns &media_columns(Relation rel);

// Called by the statement trigger of a configuration table: every backend (this one at once)
// reloads its cached configuration once the change is visible to it.
void changed(Relation config_table);

} // namespace popularity::pg::config
