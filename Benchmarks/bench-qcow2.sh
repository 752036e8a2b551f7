#!/usr/bin/env bash
# Runs `spindle bench` and `qemu-img bench` side by side on qcow2 images and
# prints Spindle's throughput as a ratio of QEMU's (goal: at least 1.0).
#
# Rows:
#   sequential 1 MiB writes into an empty image (a new image for every run);
#   4 KiB random reads and 4 KiB random writes, depth 32, on a fully
#     allocated image (a large prime step, 1009 blocks, scatters them);
#   4 KiB random reads, depth 32, through a three-deep chain (a qcow2 base
#     with every cluster, a middle overlay with every fourth 64 KiB cluster,
#     a top overlay with every seventh), so that most reads go down a level.
# QEMU runs with -i threads and -i io_uring and its best mode counts; each
# tool's best of ROUNDS runs counts, and the runs alternate so that drift in
# the machine affects both.
#
# Usage: Benchmarks/bench-qcow2.sh [-r ROUNDS] [-s SIZE_MIB] [-c COUNT]
#                                  [-t CACHE] [-d DIRECTORY]
#   SIZE_MIB: image size (default 1024); COUNT: 4 KiB requests per random row
#   (default 100000); CACHE: cache mode of every run (default writeback).
# Environment: SPINDLE (default .build/release/spindle, built if missing),
#              QEMU_IMG (default qemu-img on PATH), QEMU_IO (default qemu-io).
set -euo pipefail

rounds=3
size_mib=1024
count=100000
cache=writeback
directory=${TMPDIR:-/tmp}
while getopts "r:s:c:t:d:h" option; do
  case $option in
  r) rounds=$OPTARG ;;
  s) size_mib=$OPTARG ;;
  c) count=$OPTARG ;;
  t) cache=$OPTARG ;;
  d) directory=$OPTARG ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
    ;;
  esac
done

package=$(cd "$(dirname "$0")/.." && pwd)
spindle=${SPINDLE:-$package/.build/release/spindle}
qemu_img=${QEMU_IMG:-$(command -v qemu-img || true)}
qemu_io=${QEMU_IO:-$(command -v qemu-io || true)}
if [ -z "$qemu_img" ] || [ -z "$qemu_io" ]; then
  echo "qemu-img or qemu-io is not installed: nothing to compare with" >&2
  exit 1
fi
if [ ! -x "$spindle" ]; then
  echo "building spindle (release)..." >&2
  (cd "$package" && swift build -c release --product spindle >&2)
fi

work=$(mktemp -d "$directory/spindle-bench-qcow2.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Seconds a run took ("Run completed in S seconds."), or "fail".
run_seconds() {
  local output
  if output=$("$@" 2>&1); then
    sed -n 's/^Run completed in \([0-9.]*\) seconds\.$/\1/p' <<<"$output"
  else
    echo "$output" | head -3 >&2
    echo fail
  fi
}

# The smaller of two times, treating "" and "fail" as missing.
best_of() {
  if [ -z "$1" ] || [ "$1" = fail ]; then echo "$2"; return; fi
  if [ -z "$2" ] || [ "$2" = fail ]; then echo "$1"; return; fi
  awk -v a="$1" -v b="$2" 'BEGIN { print (a < b ? a : b) }'
}

rate() {
  awk -v c="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", c / s; else print "inf" }'
}

printf '%-46s %12s %12s %-9s %7s\n' "row" "spindle op/s" "qemu op/s" "qemu -i" "ratio"

# row NAME COUNT PREPARE BENCH_ARGS... -- IMAGE: PREPARE (a shell function,
# or "true") runs before every run, e.g. to make a new empty image.
row() {
  local name=$1 n=$2 prepare=$3
  shift 3
  local args=()
  while [ "$1" != "--" ]; do args+=("$1"); shift; done
  shift
  local image=$1
  local modes=(threads io_uring)
  local spindle_best="" qemu_best="" qemu_mode="" round mode time
  declare -A mode_best=()
  for ((round = 0; round < rounds; round++)); do
    $prepare
    time=$(run_seconds "$spindle" bench -f qcow2 -c "$n" -t "$cache" "${args[@]}" "$image")
    spindle_best=$(best_of "$spindle_best" "$time")
    for mode in "${modes[@]}"; do
      $prepare
      time=$(run_seconds "$qemu_img" bench -f qcow2 -c "$n" -t "$cache" -i "$mode" "${args[@]}" \
        "$image")
      mode_best[$mode]=$(best_of "${mode_best[$mode]:-}" "$time")
    done
  done
  for mode in "${modes[@]}"; do
    time=${mode_best[$mode]:-}
    if [ -n "$time" ] && [ "$time" != fail ] && [ "$(best_of "$qemu_best" "$time")" = "$time" ]; then
      qemu_best=$time
      qemu_mode=$mode
    fi
  done
  if [ -z "$spindle_best" ] || [ "$spindle_best" = fail ] || [ -z "$qemu_best" ]; then
    printf '%-46s %12s %12s %-9s %7s\n' "$name" "${spindle_best:-fail}" "${qemu_best:-fail}" \
      "-" "skipped"
    return
  fi
  local spindle_rate qemu_rate
  spindle_rate=$(rate "$n" "$spindle_best")
  qemu_rate=$(rate "$n" "$qemu_best")
  printf '%-46s %12s %12s %-9s %7s\n' "$name" "$spindle_rate" "$qemu_rate" "$qemu_mode" \
    "$(awk -v a="$spindle_rate" -v b="$qemu_rate" 'BEGIN { printf "%.2f", a / b }')"
}

size=$((size_mib << 20))
step=$((1009 * 4096))

# Sequential 1 MiB writes into an empty image.
empty=$work/empty.qcow2
new_empty() { "$qemu_img" create -q -f qcow2 "$empty" "$size"; }
row "qcow2 sequential 1M write, empty image" "$size_mib" new_empty -w -d 1 -s 1M -- "$empty"

# A fully allocated image: random data (so that nothing reads as zero),
# converted once into a qcow2 image.
raw=$work/data.raw
head -c "$size" /dev/urandom >"$raw"
full=$work/full.qcow2
"$qemu_img" convert -f raw -O qcow2 "$raw" "$full"
row "qcow2 4k random read, depth 32, allocated" "$count" true -d 32 -s 4k -S "$step" -- "$full"
row "qcow2 4k random write, depth 32, allocated" "$count" true -w -d 32 -s 4k -S "$step" \
  -- "$full"

# A three-deep chain over the same data.
base=$work/base.qcow2
mid=$work/mid.qcow2
top=$work/top.qcow2
cp "$full" "$base"
"$qemu_img" create -q -f qcow2 -b "$base" -F qcow2 "$mid"
"$qemu_img" create -q -f qcow2 -b "$mid" -F qcow2 "$top"
clusters=$((size >> 16))
overlay_writes() {
  local every=$1 pattern=$2 cluster
  for ((cluster = 0; cluster < clusters; cluster += every)); do
    echo "write -P $pattern $((cluster << 16)) 64k"
  done
}
overlay_writes 4 1 | "$qemu_io" -f qcow2 "$mid" >/dev/null
overlay_writes 7 2 | "$qemu_io" -f qcow2 "$top" >/dev/null
row "qcow2 4k random read, depth 32, 3-deep chain" "$count" true -d 32 -s 4k -S "$step" -- "$top"
