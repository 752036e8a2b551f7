#!/usr/bin/env bash
# Runs one fuzz target: Fuzz/fuzz.sh TARGET [libFuzzer options...]
# TARGET: qcow2-io, qcow2-check, options, qemu-io or nbd. New inputs go to
# Fuzz/.work/corpus/TARGET (not committed; SPINDLE_FUZZ_CORPUS names another
# folder); the committed seeds in Fuzz/corpus/ are read too. A finding is
# written to Fuzz/.work/findings/.
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz.sh TARGET [libFuzzer options...]}
shift
case "$target" in
  qcow2-io | qcow2-check) seeds=corpus/qcow2; limits=(-max_len=1048576 -malloc_limit_mb=512 -rss_limit_mb=3072 -timeout=60) ;;
  options) seeds=corpus/options; limits=(-max_len=4096 -timeout=20) ;;
  qemu-io) seeds=corpus/qemu-io; limits=(-max_len=4096 -malloc_limit_mb=512 -timeout=30) ;;
  nbd) seeds=corpus/nbd; limits=(-max_len=8192 -timeout=20) ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac
corpus=${SPINDLE_FUZZ_CORPUS:-.work/corpus/$target}
mkdir -p "$corpus" .work/findings
export SPINDLE_FUZZ_TARGET=$target
# Swift's own backtracer would run inside ASan after a trap (and trip it).
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
exec .build-fuzz/debug/SpindleFuzz "${limits[@]}" -detect_leaks=0 -artifact_prefix=".work/findings/$target-" \
  "$@" "$corpus" "$seeds"
