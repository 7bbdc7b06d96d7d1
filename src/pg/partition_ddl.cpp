// What an ALTER TABLE did to a partition tree, for the extension's event trigger
// (popularity._partitions_changed): the rows of a partition attached or detached under a registered
// media table appear or vanish without any row trigger firing, so the provider counts of its media
// type must be reconciled (see 30_catalog.sql). Only the event trigger can see the command.
#include "guard.hpp"

extern "C" {
#include "nodes/parsenodes.h"
#include "tcop/deparse_utility.h"
}

// popularity._attaches_or_detaches(pg_ddl_command) RETURNS boolean: whether the command is an
// ALTER TABLE with an ATTACH PARTITION or DETACH PARTITION (CONCURRENTLY or FINALIZE included).
POPULARITY_FUNCTION(popularity_attaches_or_detaches) {
    const auto *command = reinterpret_cast<const CollectedCommand *>(PG_GETARG_POINTER(0));
    if (command == nullptr || command->type != SCT_AlterTable) {
        PG_RETURN_BOOL(false);
    }
    ListCell *cell = nullptr;
    foreach (cell, command->d.alterTable.subcmds) {
        const auto *sub = static_cast<const CollectedATSubcmd *>(lfirst(cell));
        const auto *cmd = reinterpret_cast<const AlterTableCmd *>(sub->parsetree);
        if (cmd != nullptr && IsA(cmd, AlterTableCmd) &&
            (cmd->subtype == AT_AttachPartition || cmd->subtype == AT_DetachPartition ||
             cmd->subtype == AT_DetachPartitionFinalize)) {
            PG_RETURN_BOOL(true);
        }
    }
    PG_RETURN_BOOL(false);
}

