#!/usr/bin/env bash
# Runs `spindle convert` (and `map`, `check`) and the same `qemu-img`
# commands side by side and prints wall times, peak memory (from
# /usr/bin/time -v) and Spindle's time as a ratio of QEMU's (goal: at most
# 1.0, and no more memory).
#
# The source is a raw image of SIZE with half random data and half holes
# (alternating 1 MiB runs). Rows:
#   raw -> qcow2, qcow2 -> raw, raw -> compressed qcow2 (-c),
#   a three-deep qcow2 chain -> raw (the base holds the data, a middle and a
#     top overlay each rewrite every eighth 64 KiB cluster at other places),
#   map --output=json of a fragmented qcow2 image (its clusters written in
#     random order, so that host offsets are not contiguous),
#   check of the same image (skipped, with a note, while `spindle img check`
#     does not exist).
# Each command's best of ROUNDS runs counts; the runs alternate.
#
# Usage: Benchmarks/bench-convert.sh [-r ROUNDS] [-d DIRECTORY]
# Environment: BENCH_SIZE_MIB (default 4096; e.g. 512 for a quick run),
#              SPINDLE (default .build/release/spindle, built if missing),
#              QEMU_IMG (default qemu-img on PATH), QEMU_IO (default qemu-io).
set -euo pipefail

rounds=1
directory=${TMPDIR:-/tmp}
while getopts "r:d:h" option; do
  case $option in
  r) rounds=$OPTARG ;;
  d) directory=$OPTARG ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
    ;;
  esac
done
size_mib=${BENCH_SIZE_MIB:-4096}

package=$(cd "$(dirname "$0")/.." && pwd)
spindle=${SPINDLE:-$package/.build/release/spindle}
qemu_img=${QEMU_IMG:-$(command -v qemu-img || true)}
qemu_io=${QEMU_IO:-$(command -v qemu-io || true)}
if [ -z "$qemu_img" ] || [ -z "$qemu_io" ]; then
  echo "qemu-img or qemu-io is not installed: nothing to compare with" >&2
  exit 1
fi
if [ ! -x /usr/bin/time ]; then
  echo "/usr/bin/time (GNU time) is needed for peak memory" >&2
  exit 1
fi
if [ ! -x "$spindle" ]; then
  echo "building spindle (release)..." >&2
  (cd "$package" && swift build -c release --product spindle >&2)
fi

work=$(mktemp -d "$directory/spindle-bench-convert.XXXXXX")
trap 'rm -rf "$work"' EXIT

# "SECONDS KIB" for one run of a command, or "fail".
measure() {
  local report=$work/time.txt
  if /usr/bin/time -v -o "$report" "$@" >/dev/null 2>"$work/stderr.txt"; then
    awk -F': ' '
      /Elapsed \(wall clock\)/ {
        n = split($2, part, ":"); s = 0
        for (i = 1; i <= n; i++) s = s * 60 + part[i]
        seconds = s
      }
      /Maximum resident set size/ { kib = $2 }
      END { printf "%.2f %d\n", seconds, kib }' "$report"
  else
    head -3 "$work/stderr.txt" >&2
    echo fail
  fi
}

# The better of two "SECONDS KIB" results (by time), "fail" when both failed.
better() {
  if [ -z "$1" ] || [ "$1" = fail ]; then echo "${2:-fail}"; return; fi
  if [ -z "$2" ] || [ "$2" = fail ]; then echo "$1"; return; fi
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); print (x[1] <= y[1] ? a : b) }'
}

printf '%-34s %9s %9s %7s %11s %11s %7s\n' "row" "spindle s" "qemu s" "ratio" \
  "spindle MiB" "qemu MiB" "memory"

# row NAME CLEANUP ARGS...: runs "spindle img ARGS" and "qemu-img ARGS";
# CLEANUP (a path or "") is removed before every run.
row() {
  local name=$1 cleanup=$2
  shift 2
  local spindle_best="" qemu_best="" round result
  for ((round = 0; round < rounds; round++)); do
    [ -n "$cleanup" ] && rm -f "$cleanup"
    result=$(measure "$spindle" img "$@")
    spindle_best=$(better "$spindle_best" "$result")
    [ -n "$cleanup" ] && rm -f "$cleanup"
    result=$(measure "$qemu_img" "$@")
    qemu_best=$(better "$qemu_best" "$result")
  done
  [ -n "$cleanup" ] && rm -f "$cleanup"
  if [ "$spindle_best" = fail ] || [ "$qemu_best" = fail ]; then
    printf '%-34s %9s %9s %7s\n' "$name" "${spindle_best%% *}" "${qemu_best%% *}" "skipped"
    return
  fi
  read -r s_time s_kib <<<"$spindle_best"
  read -r q_time q_kib <<<"$qemu_best"
  awk -v n="$name" -v st="$s_time" -v qt="$q_time" -v sk="$s_kib" -v qk="$q_kib" 'BEGIN {
    printf "%-34s %9.2f %9.2f %7s %11.1f %11.1f %7.2f\n", n, st, qt,
      (qt > 0 ? sprintf("%.2f", st / qt) : "inf"), sk / 1024, qk / 1024, sk / qk }'
}

# The source: alternating 1 MiB runs of random data and holes.
raw=$work/source.raw
truncate -s "${size_mib}M" "$raw"
for ((mib = 0; mib < size_mib; mib += 2)); do
  echo "$mib"
done | while read -r mib; do
  head -c 1M /dev/urandom | dd of="$raw" bs=1M seek="$mib" conv=notrunc status=none
done
qcow2=$work/source.qcow2
"$qemu_img" convert -f raw -O qcow2 "$raw" "$qcow2"

out_qcow2=$work/out.qcow2
out_raw=$work/out.raw
row "convert raw -> qcow2" "$out_qcow2" convert -f raw -O qcow2 "$raw" "$out_qcow2"
row "convert qcow2 -> raw" "$out_raw" convert -f qcow2 -O raw "$qcow2" "$out_raw"
row "convert raw -> qcow2 -c" "$out_qcow2" convert -c -f raw -O qcow2 "$raw" "$out_qcow2"

# A three-deep chain: the data in the base, overlays over parts of it.
mid=$work/mid.qcow2
top=$work/top.qcow2
"$qemu_img" create -q -f qcow2 -b "$qcow2" -F qcow2 "$mid"
"$qemu_img" create -q -f qcow2 -b "$mid" -F qcow2 "$top"
clusters=$((size_mib << 4))
for ((cluster = 0; cluster < clusters; cluster += 8)); do
  echo "write -P 1 $((cluster << 16)) 64k"
done | "$qemu_io" -f qcow2 "$mid" >/dev/null
for ((cluster = 3; cluster < clusters; cluster += 8)); do
  echo "write -P 2 $((cluster << 16)) 64k"
done | "$qemu_io" -f qcow2 "$top" >/dev/null
row "convert 3-deep qcow2 chain -> raw" "$out_raw" convert -f qcow2 -O raw "$top" "$out_raw"

# A fragmented image: every other 64 KiB cluster written, in random order.
fragmented=$work/fragmented.qcow2
"$qemu_img" create -q -f qcow2 "$fragmented" "${size_mib}M"
for ((cluster = 0; cluster < clusters; cluster += 2)); do
  echo "write -P 3 $((cluster << 16)) 64k"
done | shuf --random-source=<(yes) | "$qemu_io" -f qcow2 "$fragmented" >/dev/null
row "map --output=json, fragmented" "" map --output=json -f qcow2 "$fragmented"
if "$spindle" img check "$fragmented" >/dev/null 2>&1; then
  row "check, fragmented" "" check -f qcow2 "$fragmented"
else
  printf '%-34s %s\n' "check, fragmented" "skipped: spindle img check is not available"
fi
