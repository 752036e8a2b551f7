#!/usr/bin/env bash
# Long fuzzing: Fuzz/run-long.sh [SECONDS-PER-TARGET] [TARGET...]
# Runs each target (all by default) for the given time (default 3600 s) one
# after another, keeping the grown corpus in Fuzz/.work/corpus; findings go to
# Fuzz/.work/findings; each target's log to Fuzz/.work/logs/TARGET.log.
set -uo pipefail
cd "$(dirname "$0")"
seconds=${1:-3600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(qcow2-io qcow2-check options qemu-io nbd)
[ -x .build-fuzz/debug/SpindleFuzz ] || ./build.sh
mkdir -p .work/logs
for target in "${targets[@]}"; do
  ./fuzz.sh "$target" -max_total_time="$seconds" -print_final_stats=1 \
    > ".work/logs/$target.log" 2>&1
  echo "$target: exit $? $(grep -E 'stat::number_of_executed_units' ".work/logs/$target.log")"
done
