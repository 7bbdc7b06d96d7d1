// The one place that includes PostgreSQL's C headers into C++ code. Files in src/pg include the
// core headers they need first (the core refuses to be compiled after postgres.h), then this one.
#pragma once

extern "C" {
#include "postgres.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/elog.h"
#include "utils/guc.h"
#include "utils/memutils.h"
}
