#!/usr/bin/env bash
# Spindle's rbd driver and QEMU's (qemu-block-extra) side by side on one
# throwaway Ceph cluster (Tests/ceph/ceph-single-node.sh, bluestore so that
# memory stays bounded, ports 26800-26899), in the same run:
#   bench read and write, 4 KiB requests at depth 32, ops/s and Spindle's as
#     a ratio of QEMU's (goal >= 1.0); qemu-img bench has no random mode, so
#     requests step through the image by BENCH_STEP bytes (-S);
#   convert of a half-random raw image (alternating 1 MiB runs of random
#     data and holes) to RBD and back, wall time and ratio (goal <= 1.0).
# Each row is the best of ROUNDS alternating runs.
#
# Usage: Benchmarks/bench-rbd.sh [-r ROUNDS]
# Environment: BENCH_SIZE_MIB (default 1024), BENCH_COUNT (bench requests,
#   default 100000), BENCH_STEP (default 4096), SPINDLE (default
#   .build/release/spindle, built if missing), QEMU_IMG (default qemu-img).
set -euo pipefail

rounds=1
while getopts "r:h" option; do
  case $option in
  r) rounds=$OPTARG ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
    ;;
  esac
done
size_mib=${BENCH_SIZE_MIB:-1024}
count=${BENCH_COUNT:-100000}
step=${BENCH_STEP:-4096}
package=$(cd "$(dirname "$0")/.." && pwd)
spindle=${SPINDLE:-$package/.build/release/spindle}
qemu_img=${QEMU_IMG:-$(command -v qemu-img || true)}
[ -n "$qemu_img" ] || { echo "qemu-img is not installed" >&2; exit 1; }
if [ ! -x "$spindle" ]; then
  echo "building spindle (release)..." >&2
  (cd "$package" && swift build -c release --product spindle >&2)
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/spindle-bench-rbd.XXXXXX")
export CEPH_DIR=$work/ceph CEPH_PORT=${CEPH_PORT:-26800} CEPH_STORE=bluestore
export CEPH_BYTES=$(((size_mib * 4 + 1024) << 20)) CEPH_POOL=benchpool
cluster=$package/Tests/ceph/ceph-single-node.sh
trap '"$cluster" stop || true; rm -rf "$work"' EXIT
eval "$("$cluster" start)"
pool=$CEPH_POOL

# Seconds of wall time of one run, or "fail".
seconds() {
  local start end
  start=$(date +%s.%N)
  if "$@" >"$work/out.txt" 2>"$work/err.txt"; then
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f\n", b - a }'
  else
    head -3 "$work/err.txt" >&2
    echo fail
  fi
}

# ops/s of one `bench` run (its own "Run completed in X seconds"), or "fail".
ops() {
  if "$@" >"$work/out.txt" 2>"$work/err.txt"; then
    awk -v n="$count" '/Run completed in/ { printf "%.0f\n", n / $4 }' "$work/out.txt"
  else
    head -3 "$work/err.txt" >&2
    echo fail
  fi
}

# best KIND A B: the better of two results (higher ops/s, lower seconds).
best() {
  if [ -z "$2" ] || [ "$2" = fail ]; then echo "${3:-fail}"; return; fi
  if [ -z "$3" ] || [ "$3" = fail ]; then echo "$2"; return; fi
  awk -v k="$1" -v a="$2" -v b="$3" 'BEGIN {
    if (k == "ops") print (a >= b ? a : b); else print (a <= b ? a : b) }'
}

printf '%-36s %12s %12s %7s\n' "row" "spindle" "qemu" "ratio"
report() { # NAME UNIT SPINDLE QEMU
  if [ "$3" = fail ] || [ "$4" = fail ]; then
    printf '%-36s %12s %12s %7s\n' "$1" "$3" "$4" "failed"
    return
  fi
  awk -v n="$1" -v u="$2" -v s="$3" -v q="$4" 'BEGIN {
    printf "%-36s %12s %12s %7.2f\n", n, s " " u, q " " u, s / q }'
}

# The source: alternating 1 MiB runs of random data and holes.
source=$work/source.raw
truncate -s "${size_mib}M" "$source"
for ((mib = 0; mib < size_mib; mib += 2)); do
  head -c 1M /dev/urandom | dd of="$source" bs=1M seek="$mib" conv=notrunc status=none
done

# The bench image: written in full once, so that reads hit data.
"$qemu_img" convert -f raw -O raw "$source" "rbd:$pool/bench"
for kind in read write; do
  flags=(-f raw -c "$count" -d 32 -s 4k -S "$step")
  [ "$kind" = write ] && flags+=(-w)
  s_best="" q_best=""
  for ((round = 0; round < rounds; round++)); do
    s_best=$(best ops "$s_best" "$(ops "$spindle" bench "${flags[@]}" "rbd:$pool/bench")")
    q_best=$(best ops "$q_best" "$(ops "$qemu_img" bench "${flags[@]}" "rbd:$pool/bench")")
  done
  report "bench $kind 4k depth 32 (ops/s)" "" "$s_best" "$q_best"
done

# convert to RBD (the target image removed before each run) and back.
s_to="" q_to="" s_from="" q_from=""
for ((round = 0; round < rounds; round++)); do
  rbd rm --no-progress "$pool/target" >/dev/null 2>&1 || true
  s_to=$(best time "$s_to" "$(seconds "$spindle" convert -f raw -O raw "$source" "rbd:$pool/target")")
  rbd rm --no-progress "$pool/target" >/dev/null 2>&1 || true
  q_to=$(best time "$q_to" "$(seconds "$qemu_img" convert -f raw -O raw "$source" "rbd:$pool/target")")
  rm -f "$work/back.raw"
  s_from=$(best time "$s_from" "$(seconds "$spindle" convert -f raw -O raw "rbd:$pool/target" "$work/back.raw")")
  rm -f "$work/back.raw"
  q_from=$(best time "$q_from" "$(seconds "$qemu_img" convert -f raw -O raw "rbd:$pool/target" "$work/back.raw")")
done
cmp "$source" "$work/back.raw" || echo "WARNING: the round trip differs" >&2
report "convert ${size_mib} MiB half-random to rbd (s)" "" "$s_to" "$q_to"
report "convert ${size_mib} MiB half-random from rbd (s)" "" "$s_from" "$q_from"
