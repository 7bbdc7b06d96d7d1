// The extension's GUCs (all prefixed "popularity.").
#pragma once

namespace popularity::pg {

// popularity.strict_metrics: an unusable metric value raises 22P02 instead of scoring NULL.
extern bool strict_metrics;

void define_settings();

} // namespace popularity::pg
