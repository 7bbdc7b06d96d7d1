// Every header of src/core includes this one first. The core is plain C++17: it must stay testable
// without a server, and PostgreSQL's longjmp-based error handling must never run through its
// frames.
//
// Enforcement: core translation units are compiled with -DPOPULARITY_CORE_BUILD and without any
// PostgreSQL include directory (both in the PGXS Makefile and in CMake), so including postgres.h
// in the core does not compile; and should postgres.h ever be reachable, this assertion fires.
#pragma once

#if defined(POPULARITY_CORE_BUILD) && defined(POSTGRES_H)
static_assert(false, "src/core must not include PostgreSQL headers: move the code to src/pg");
#endif
