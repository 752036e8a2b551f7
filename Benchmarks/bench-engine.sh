#!/usr/bin/env bash
# Runs `spindle bench` and `qemu-img bench` side by side, alternating between
# them, and prints Spindle's IOPS as a ratio of QEMU's.
#
# Rows:
#   null-co, 4 KiB reads at depth 1 and 64 (the engine's per-request cost);
#   a raw file, 4 KiB requests at depth 32 with a large prime step (1009 blocks
#   of 4 KiB) so that they scatter, reads and writes, cache=none and writeback.
# For each row QEMU runs with every AIO mode (-i threads, native, io_uring;
# native only with cache=none) and its best one is compared; Spindle has one
# I/O implementation. Each tool's best of ROUNDS runs counts, and the runs
# alternate (Spindle, then each QEMU mode, repeated) so that drift in the
# machine affects both.
#
# The raw file rows also run fio (io_uring engine, same file, block size,
# depth and request count; direct=1 for cache=none, buffered with the page
# cache left as the benches find it (invalidate=0) for writeback; random
# offsets where the benches stride) in the same rounds: the physical limit,
# printed as Spindle's ratio of fio. With SPINDLE_BEFORE set to an older spindle binary, that one
# runs in the same rounds too and its IOPS are printed beside the current one.
#
# Usage: Benchmarks/bench-engine.sh [-r ROUNDS] [-n NULL_COUNT] [-c FILE_COUNT]
#                                   [-s FILE_SIZE_MIB] [-d DIRECTORY]
# Environment: SPINDLE (default .build/release/spindle, built if missing),
#              SPINDLE_BEFORE (an older spindle to compare with; none if unset),
#              QEMU_IMG (default qemu-img on PATH), FIO (default fio on PATH;
#              the fio column is "-" without it).
set -euo pipefail

rounds=3
null_count=1000000
file_count=50000
file_size_mib=1024
directory=${TMPDIR:-/tmp}
while getopts "r:n:c:s:d:h" option; do
  case $option in
  r) rounds=$OPTARG ;;
  n) null_count=$OPTARG ;;
  c) file_count=$OPTARG ;;
  s) file_size_mib=$OPTARG ;;
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
if [ -z "$qemu_img" ]; then
  echo "qemu-img is not installed: nothing to compare with" >&2
  exit 1
fi
spindle_before=${SPINDLE_BEFORE:-}
fio=${FIO:-$(command -v fio || true)}
if [ ! -x "$spindle" ]; then
  echo "building spindle (release)..." >&2
  (cd "$package" && swift build -c release --product spindle >&2)
fi

work=$(mktemp -d "$directory/spindle-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
image=$work/bench.raw

# Seconds a run took ("Run completed in S seconds."), or "fail".
run_seconds() {
  local output
  if output=$("$@" 2>&1); then
    sed -n 's/^Run completed in \([0-9.]*\) seconds\.$/\1/p' <<<"$output"
  else
    echo fail
  fi
}

# The smaller of two times, treating "" and "fail" as missing.
best_of() {
  if [ -z "$1" ] || [ "$1" = fail ]; then echo "$2"; return; fi
  if [ -z "$2" ] || [ "$2" = fail ]; then echo "$1"; return; fi
  awk -v a="$1" -v b="$2" 'BEGIN { print (a < b ? a : b) }'
}

# Seconds fio took for its I/Os (from its JSON report), or "fail".
fio_seconds() {
  local output
  if output=$("$fio" --output-format=json "$@" 2>/dev/null); then
    python3 -c '
import json, sys
job = json.load(sys.stdin)["jobs"][0]
side = job["write"] if job["write"]["total_ios"] > 0 else job["read"]
print(side["runtime"] / 1000 if side["runtime"] > 0 else "fail")' <<<"$output" || echo fail
  else
    echo fail
  fi
}

iops() {
  awk -v c="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", c / s; else print "inf" }'
}

line() {
  printf '%-44s %12s %12s %12s %-9s %6s %10s %6s\n' "$@"
}
line "row" "spindle IOPS" "before IOPS" "qemu IOPS" "qemu -i" "ratio" "fio IOPS" "/fio"

# row NAME COUNT CACHE FIO_ARGS BENCH_ARGS... -- TARGET_ARGS...
# FIO_ARGS: fio's job options for the same I/O (space-separated), or "" for none.
row() {
  local name=$1 count=$2 cache=$3 fio_args=$4
  shift 4
  local args=() target=()
  while [ "$1" != "--" ]; do args+=("$1"); shift; done
  shift
  target=("$@")
  local modes=(threads io_uring)
  [ "$cache" = none ] && modes+=(native)
  local spindle_best="" before_best="" qemu_best="" qemu_mode="" fio_best=""
  declare -A qemu_mode_best=()
  local round mode time
  for ((round = 0; round < rounds; round++)); do
    time=$(run_seconds "$spindle" bench -c "$count" -t "$cache" "${args[@]}" "${target[@]}")
    spindle_best=$(best_of "$spindle_best" "$time")
    if [ -n "$spindle_before" ]; then
      time=$(run_seconds "$spindle_before" bench -c "$count" -t "$cache" "${args[@]}" \
        "${target[@]}")
      before_best=$(best_of "$before_best" "$time")
    fi
    if [ -n "$fio_args" ] && [ -n "$fio" ]; then
      # shellcheck disable=SC2086 # fio_args is a list of options
      time=$(fio_seconds --name=bench --ioengine=io_uring --number_ios="$count" $fio_args)
      fio_best=$(best_of "$fio_best" "$time")
    fi
    for mode in "${modes[@]}"; do
      time=$(run_seconds "$qemu_img" bench -c "$count" -t "$cache" -i "$mode" "${args[@]}" \
        "${target[@]}")
      qemu_mode_best[$mode]=$(best_of "${qemu_mode_best[$mode]:-}" "$time")
    done
  done
  for mode in "${modes[@]}"; do
    time=${qemu_mode_best[$mode]:-}
    if [ -n "$time" ] && [ "$time" != fail ] && [ "$(best_of "$qemu_best" "$time")" = "$time" ]; then
      qemu_best=$time
      qemu_mode=$mode
    fi
  done
  if [ -z "$spindle_best" ] || [ "$spindle_best" = fail ] || [ -z "$qemu_best" ]; then
    line "$name" "${spindle_best:-fail}" "-" "${qemu_best:-fail}" "-" "skipped" "-" "-"
    return
  fi
  local spindle_iops qemu_iops before_iops="-" fio_iops="-" fio_ratio="-"
  spindle_iops=$(iops "$count" "$spindle_best")
  qemu_iops=$(iops "$count" "$qemu_best")
  if [ -n "$before_best" ] && [ "$before_best" != fail ]; then
    before_iops=$(iops "$count" "$before_best")
  fi
  if [ -n "$fio_best" ] && [ "$fio_best" != fail ]; then
    fio_iops=$(iops "$count" "$fio_best")
    fio_ratio=$(awk -v a="$spindle_iops" -v b="$fio_iops" 'BEGIN { printf "%.2f", a / b }')
  fi
  line "$name" "$spindle_iops" "$before_iops" "$qemu_iops" "$qemu_mode" \
    "$(awk -v a="$spindle_iops" -v b="$qemu_iops" 'BEGIN { printf "%.2f", a / b }')" \
    "$fio_iops" "$fio_ratio"
}

null=(--image-opts driver=null-co,size=1G)
row "null-co 4k read, depth 1" "$null_count" writeback "" -d 1 -s 4k -- "${null[@]}"
row "null-co 4k read, depth 64" "$null_count" writeback "" -d 64 -s 4k -- "${null[@]}"

# A fully allocated file, so that reads hit data, not holes.
if ! dd if=/dev/zero of="$image" bs=1M count="$file_size_mib" conv=fsync status=none 2>/dev/null; then
  echo "cannot create $image" >&2
  exit 1
fi
# 1009 (prime) blocks of 4 KiB: aligned for O_DIRECT, scattered over the file.
step=$((1009 * 4096))
file=(-f raw "$image")
for cache in none writeback; do
  direct=$([ "$cache" = none ] && echo 1 || echo 0)
  fio_file="--filename=$image --size=${file_size_mib}M --bs=4k --iodepth=32 --direct=$direct"
  fio_file+=" --norandommap --randrepeat=0 --invalidate=0"
  row "raw file 4k read, depth 32, cache=$cache" "$file_count" "$cache" \
    "$fio_file --rw=randread" -d 32 -s 4k -S "$step" -- "${file[@]}"
  row "raw file 4k write, depth 32, cache=$cache" "$file_count" "$cache" \
    "$fio_file --rw=randwrite" -w -d 32 -s 4k -S "$step" -- "${file[@]}"
done
