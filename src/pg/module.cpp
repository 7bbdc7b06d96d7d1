// Module entry: the magic block and _PG_init.
#include "pg_includes.hpp"

extern "C" {
PG_MODULE_MAGIC;

void _PG_init(void);
void _PG_init(void) {
    MarkGUCPrefixReserved("popularity");
}
}
