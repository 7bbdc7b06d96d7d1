# PGXS build of the popularity extension: the canonical build and install.
EXTENSION = popularity
EXTVERSION = 0.1.0
MODULE_big = popularity

CORE_SRCS = $(wildcard src/core/*.cpp)
PG_SRCS = $(wildcard src/pg/*.cpp) $(wildcard src/worker/*.cpp)
OBJS = $(CORE_SRCS:.cpp=.o) $(PG_SRCS:.cpp=.o)

DATA = $(wildcard sql/$(EXTENSION)--*.sql)

REGRESS = core_functions metric_value percentile guard
REGRESS_OPTS = --load-extension=$(EXTENSION)

# C++17; warnings are errors with WERROR=1 (CI). -Wno-register: PostgreSQL 15 headers use the
# C "register" keyword; -fno-strict-aliasing -fwrapv: as PostgreSQL itself, its macros rely on them.
# Floating-point contraction is off so every formula rounds exactly like PostgreSQL's float8 operators.
PG_CXXFLAGS = -std=c++17 -fPIC -Wall -Wextra -Wno-unused-parameter -Wno-register \
	-fno-strict-aliasing -fwrapv -ffp-contract=off -fno-fast-math
ifeq ($(WERROR),1)
PG_CXXFLAGS += -Werror
endif
SHLIB_LINK = -lstdc++

# No LLVM bitcode for JIT inlining: it would need clang and buys nothing for these functions.
override with_llvm = no

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PostgreSQL's CXXFLAGS are tuned for its own C++ (LLVM JIT); ours are set above.
$(OBJS): CXXFLAGS := -O2 -g $(PG_CXXFLAGS)
$(OBJS): $(wildcard src/core/*.hpp src/pg/*.hpp src/worker/*.hpp)
