#!/usr/bin/env bash
# Runs `spindle convert` and `qemu-img convert` side by side reading from the
# same NBD export (qemu-nbd 7.2 over a Unix socket, persistent) and prints
# wall times and Spindle's time as a ratio of QEMU's (goal: at most 1.0).
#
# Rows:
#   dense:  a raw image of SIZE MiB of random data -> raw file
#   sparse: a qcow2 of 4 x SIZE MiB with SIZE/8 MiB of data spread in 1 MiB
#           runs -> raw file (block status and holes matter)
# Each command's best of ROUNDS runs counts; the runs alternate.
#
# Usage: Benchmarks/bench-nbd-client.sh [-r ROUNDS] [-d DIRECTORY]
# Environment: BENCH_SIZE_MIB (default 1024), SPINDLE (default
#              .build/release/spindle, built if missing), QEMU_IMG, QEMU_NBD,
#              QEMU_IO (default: found on PATH).
set -euo pipefail

rounds=3
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
size_mib=${BENCH_SIZE_MIB:-1024}

package=$(cd "$(dirname "$0")/.." && pwd)
spindle=${SPINDLE:-$package/.build/release/spindle}
qemu_img=${QEMU_IMG:-$(command -v qemu-img)}
qemu_nbd=${QEMU_NBD:-$(command -v qemu-nbd)}
qemu_io=${QEMU_IO:-$(command -v qemu-io)}
if [ ! -x "$spindle" ]; then
  (cd "$package" && swift build -c release --product spindle >&2)
fi

work=$(mktemp -d "$directory/bench-nbd-client.XXXXXX")
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Serves $1 (format $2) on $work/s.sock; returns once the socket exists.
serve() {
  rm -f "$work/s.sock"
  "$qemu_nbd" -t -k "$work/s.sock" -f "$2" "$1" &
  server_pid=$!
  for _ in $(seq 1 200); do
    [ -S "$work/s.sock" ] && return 0
    sleep 0.05
  done
  echo "qemu-nbd did not start" >&2
  exit 1
}

stop() {
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}

# Best wall time in seconds of "$@" over $rounds runs (output file removed
# before each run).
best_time() {
  local best=
  for _ in $(seq 1 "$rounds"); do
    rm -f "$work/out.raw"
    local start end elapsed
    start=$(date +%s.%N)
    "$@" >/dev/null
    end=$(date +%s.%N)
    elapsed=$(echo "$end - $start" | bc -l)
    if [ -z "$best" ] || [ "$(echo "$elapsed < $best" | bc -l)" = 1 ]; then best=$elapsed; fi
  done
  printf '%.3f' "$best"
}

row() {
  local name=$1
  local url="nbd+unix:///?socket=$work/s.sock"
  local qemu spindle_time
  qemu=$(best_time "$qemu_img" convert -O raw "$url" "$work/out.raw")
  spindle_time=$(best_time "$spindle" convert -O raw "$url" "$work/out.raw")
  printf '%-8s %10s %10s %8.2f\n' "$name" "$qemu" "$spindle_time" \
    "$(echo "$spindle_time / $qemu" | bc -l)"
}

printf '%-8s %10s %10s %8s\n' "row" "qemu-img" "spindle" "ratio"

head -c $((size_mib << 20)) /dev/urandom >"$work/dense.raw"
serve "$work/dense.raw" raw
row dense
stop

"$qemu_img" create -q -f qcow2 "$work/sparse.qcow2" $((size_mib * 4))M
script=()
for ((mib = 0; mib < size_mib * 4; mib += 32)); do
  script+=(-c "write -P 0x5a ${mib}M 1M")
done
"$qemu_io" -f qcow2 "${script[@]}" "$work/sparse.qcow2" >/dev/null
serve "$work/sparse.qcow2" qcow2
row sparse
stop
