#!/usr/bin/env bash
# Bounded fuzzing (issue 12, "Fuzzed"), on its own throwaway server (it needs its own settings:
# crash restarts, full queries of crashed backends in the log): the targeted fuzzer (every function
# and procedure of the extension with generated arguments, the aggregate and trigger scenarios,
# as the superuser and as a plain role, plus the plain role's probes), then sqlsmith for 30 s as
# each role while refreshes and tag filtering run. Fails on any server crash ("terminated by
# signal") and prints each with its query; see test/fuzz/run for the long run and the options.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp -d /tmp/popularity-fuzz-smoke.XXXXXX)
test/fuzz/run --rows 3000 --combos 2 --seconds 30 --seed "${FUZZ_SEED:-1}" --out "$out"
rc=$?
echo "fuzz results kept in $out"
exit $rc
