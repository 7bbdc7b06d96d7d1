// Every header of src/core includes this one first. The core is plain C++17: it must stay
// testable without a server, and PostgreSQL's longjmp-based error handling must never run through
// its frames. Including postgres.h before any core header is a compile error.
#pragma once

#ifdef POSTGRES_H
static_assert(false, "src/core must not be compiled together with postgres.h: include the core "
                     "headers before any PostgreSQL header, or move the code to src/pg");
#endif
