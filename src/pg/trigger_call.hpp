// The start of every trigger function of the extension.
#pragma once

#include "guard.hpp"

extern "C" {
#include "commands/trigger.h"
}

namespace popularity::pg {

// The TriggerData of the call; raises 39P01 naming the function unless it was called as a trigger.
inline TriggerData *trigger_call(FunctionCallInfo fcinfo, const char *function_name) {
    if (!CALLED_AS_TRIGGER(fcinfo)) {
        throw SqlError(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                       strprintf("%s must be called as a trigger", function_name));
    }
    return reinterpret_cast<TriggerData *>(fcinfo->context);
}

} // namespace popularity::pg
