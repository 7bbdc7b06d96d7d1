# PGXS build of the popularity extension: the canonical build and install.
EXTENSION = popularity
# The version is written once, in the control file.
EXTVERSION = $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" $(EXTENSION).control)
MODULE_big = popularity

CORE_SRCS = $(wildcard src/core/*.cpp)
PG_SRCS = $(wildcard src/pg/*.cpp) $(wildcard src/worker/*.cpp)
OBJS = $(CORE_SRCS:.cpp=.o) $(PG_SRCS:.cpp=.o)

# The extension script is assembled from ordered fragments (sql/install/NN_topic.sql), one per
# concept, so that each feature keeps its SQL beside its own tests.
INSTALL_FRAGMENTS = $(sort $(wildcard sql/install/*.sql))
DATA_built = build/$(EXTENSION)--$(EXTVERSION).sql
# Released versions are frozen: their scripts (sql/popularity--X.sql) and every upgrade script
# (sql/popularity--A--B.sql) are kept as committed files; a change to the SQL after a release ships
# as an upgrade script (test/scripts/upgrade.sh checks that an upgraded install equals a fresh one).
DATA = $(filter-out $(DATA_built),$(wildcard sql/$(EXTENSION)--*.sql))

# Every sql/*.sql (except the assembled script) is a pg_regress test, run in name order.
REGRESS = $(sort $(filter-out $(EXTENSION)--%,$(basename $(notdir $(wildcard sql/*.sql)))))
REGRESS_OPTS = --load-extension=$(EXTENSION)

# Isolation specs (concurrency claims): test/isolation/specs/*.spec, expected output beside them.
ISOLATION = $(sort $(basename $(notdir $(wildcard test/isolation/specs/*.spec))))
ISOLATION_OPTS = --inputdir=test/isolation --load-extension=$(EXTENSION)

# C++17; warnings are errors with WERROR=1 (CI). -Wno-register: PostgreSQL 15 headers use the
# C "register" keyword; -fno-strict-aliasing -fwrapv: as PostgreSQL itself, its macros rely on them.
# Floating-point contraction is off so every formula rounds exactly like PostgreSQL's float8 operators.
PG_CXXFLAGS = -std=c++17 -fPIC -Wall -Wextra -Wno-unused-parameter -Wno-register \
	-fno-strict-aliasing -fwrapv -ffp-contract=off -fno-fast-math
ifeq ($(WERROR),1)
PG_CXXFLAGS += -Werror
endif
# ICU's common library: full Unicode lower-casing for the tag rules (PostgreSQL links it too).
SHLIB_LINK = -lstdc++ -licuuc

# No LLVM bitcode for JIT inlining: it would need clang and buys nothing for these functions.
override with_llvm = no

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

build/$(EXTENSION)--$(EXTVERSION).sql: $(INSTALL_FRAGMENTS)
	@mkdir -p build
	{ echo '-- popularity extension, version $(EXTVERSION) (assembled from sql/install/)'; \
	  echo '\\echo Use "CREATE EXTENSION popularity" to load this file. \\quit'; \
	  for f in $^; do echo; echo "-- $$f"; cat "$$f"; done; } > $@

# PostgreSQL's CXXFLAGS are tuned for its own C++ (LLVM JIT); ours are set above.
$(OBJS): CXXFLAGS := -O2 -g $(PG_CXXFLAGS)
# The core sees no PostgreSQL include directory at all (see src/core/no_postgres.hpp).
$(CORE_SRCS:.cpp=.o): override CPPFLAGS := -DPOPULARITY_CORE_BUILD -D_GNU_SOURCE
$(OBJS): $(wildcard src/core/*.hpp src/pg/*.hpp src/worker/*.hpp)
