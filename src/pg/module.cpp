// Module entry: the magic block and _PG_init.
#include "pg_includes.hpp"
#include "settings.hpp"
#include "shared_state.hpp"
#include "../worker/refresh.hpp"

extern "C" {
PG_MODULE_MAGIC;

void _PG_init(void);
void _PG_init(void) {
    popularity::pg::define_settings();
    MarkGUCPrefixReserved("popularity");
    if (process_shared_preload_libraries_in_progress) {
        popularity::pg::install_shared_state_hooks();
        popularity::worker::register_launcher();
    }
}
}
