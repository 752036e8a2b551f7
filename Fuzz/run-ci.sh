#!/usr/bin/env bash
# CI's fuzz stage: builds the targets, then runs each over its committed seed
# corpus and a fixed number of mutations (regressions and a smoke test; a
# finding fails the stage). Prints each step's time.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p .work  # logs and corpora (ignored by git: absent in a fresh clone)
# Mutations per target: the qcow2 targets run a whole image through the
# engine per input (a few to 25 a second): CI runs them over the committed
# corpus only (0 mutations: regressions); the parsers run thousands a second.
qcow2_runs=${SPINDLE_FUZZ_CI_QCOW2_RUNS:-0}
parser_runs=${SPINDLE_FUZZ_CI_RUNS:-4000}
start=$SECONDS
./build.sh
echo "fuzz build: $((SECONDS - start)) s"
for target in qcow2-io qcow2-check options qemu-io nbd; do
  step=$SECONDS
  case "$target" in qcow2-*) runs=$qcow2_runs ;; *) runs=$parser_runs ;; esac
  rm -rf ".work/ci-corpus/$target"
  SPINDLE_FUZZ_CORPUS=".work/ci-corpus/$target" ./fuzz.sh "$target" -runs="$runs" -seed=1 -print_final_stats=1 > ".work/ci-$target.log" 2>&1 || {
    tail -n 60 ".work/ci-$target.log"
    echo "fuzz $target: a finding (see above)"
    exit 1
  }
  grep -E "^#[0-9]+ +DONE|stat::number_of_executed_units" ".work/ci-$target.log" || true
  echo "fuzz $target: $runs runs in $((SECONDS - step)) s"
done
echo "fuzz stage: $((SECONDS - start)) s"
