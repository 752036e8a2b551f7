#!/usr/bin/env bash
# Runs three NBD servers side by side on the same images over a Unix socket:
# `spindle serve`, qemu-nbd 7.2 and nbdkit's file plugin (raw images only:
# nbdkit 1.32 cannot read qcow2), each with its defaults plus -t (persistent)
# and -e 0 (any number of clients, so also CAN_MULTI_CONN) for Spindle and
# qemu-nbd. Prints each server's figure and Spindle's throughput as a ratio
# of the others' (above 1: Spindle is faster).
#
# Rows:
#   fio's nbd engine, 4 KiB random reads / writes at queue depth 16, with 1
#   and 2 connections (one per job), for TIME seconds each, on a raw image of
#   SIZE MiB of random data, then on the same data as a qcow2 image (IOPS);
#   nbdcopy of that raw image, and of a sparse qcow2 of 4 x SIZE MiB with
#   SIZE/8 MiB of data in 1 MiB runs, to `null:` (seconds, best of ROUNDS).
# The servers alternate within each round. fio rows are skipped (and say so)
# when fio has no nbd engine.
#
# Usage: Benchmarks/bench-nbd.sh [-r ROUNDS] [-t TIME] [-d DIRECTORY]
# Environment: BENCH_SIZE_MIB (default 1024), SPINDLE (default
#              .build/release/spindle, built if missing), QEMU_NBD, QEMU_IMG,
#              QEMU_IO, NBDKIT, NBDCOPY, FIO (default: found on PATH).
set -euo pipefail

rounds=3
seconds=10
directory=${TMPDIR:-/tmp}
while getopts "r:t:d:h" option; do
  case $option in
  r) rounds=$OPTARG ;;
  t) seconds=$OPTARG ;;
  d) directory=$OPTARG ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
  esac
done
size_mib=${BENCH_SIZE_MIB:-1024}
qemu_nbd=${QEMU_NBD:-$(command -v qemu-nbd)}
qemu_img=${QEMU_IMG:-$(command -v qemu-img)}
qemu_io=${QEMU_IO:-$(command -v qemu-io)}
nbdkit=${NBDKIT:-$(command -v nbdkit)}
nbdcopy=${NBDCOPY:-$(command -v nbdcopy)}
fio=${FIO:-$(command -v fio || true)}
# shellcheck source=lib/nbd-common.sh
source "$(dirname "$0")/lib/nbd-common.sh"
have_fio=0
if [ -n "$fio" ] && "$fio" --enghelp 2>/dev/null | grep -qx '[[:space:]]*nbd'; then have_fio=1; fi
socket=$work/s.sock

# Starts server $1 (spindle, qemu, nbdkit) on image $2 of format $3; returns
# once the socket accepts connections.
serve() {
  rm -f "$socket"
  case $1 in
  spindle) serve_on_socket "$spindle" serve -t -e 0 -k "$socket" -f "$3" "$2" ;;
  qemu) serve_on_socket "$qemu_nbd" -t -e 0 -k "$socket" -f "$3" "$2" ;;
  nbdkit) serve_on_socket "$nbdkit" -f -U "$socket" file "file=$2" ;;
  esac
}

uri="nbd+unix:///?socket=$socket"

# IOPS of one fio run: $1 randread|randwrite, $2 connections.
fio_iops() {
  "$fio" --name=bench --ioengine=nbd --uri="$uri" --rw="$1" --bs=4k --iodepth=16 \
    --numjobs="$2" --time_based --runtime="$seconds" --group_reporting \
    --output-format=json 2>/dev/null |
    python3 -c '
import json, sys
text = sys.stdin.read()  # the nbd engine prints a line before the JSON
job = json.loads(text[text.index("{"):])["jobs"][0]
print(round(job["read"]["iops"] + job["write"]["iops"]))'
}

echo "preparing images ($size_mib MiB) in $work" >&2
raw=$work/dense.raw
qcow2=$work/dense.qcow2
sparse=$work/sparse.qcow2
head -c "$((size_mib << 20))" /dev/urandom >"$raw"
"$qemu_img" convert -f raw -O qcow2 "$raw" "$qcow2"
make_sparse_qcow2 "$sparse" "$size_mib"

# best[row,server]: the best figure over the rounds (IOPS: highest; seconds:
# lowest).
declare -A best
record() { # row server value higher-is-better
  local key="$1,$2" current=${best["$1,$2"]:-}
  if [ -z "$current" ] ||
    { [ "$4" = 1 ] && [ "$(echo "$3 > $current" | bc -l)" = 1 ]; } ||
    { [ "$4" = 0 ] && [ "$(echo "$3 < $current" | bc -l)" = 1 ]; }; then
    best[$key]=$3
  fi
}

rows=()
for round in $(seq 1 "$rounds"); do
  echo "round $round of $rounds" >&2
  for image in raw qcow2; do
    path=$raw format=raw servers="spindle qemu nbdkit"
    if [ $image = qcow2 ]; then path=$qcow2 format=qcow2 servers="spindle qemu"; fi
    for server in $servers; do
      serve $server "$path" $format
      row="nbdcopy $size_mib MiB $image"
      record "$row" $server "$(elapsed_seconds "$nbdcopy" "$uri" null:)" 0
      if [ $have_fio = 1 ] && [ "$round" = 1 ]; then
        for rw in randread randwrite; do
          for connections in 1 2; do
            row="fio $rw 4k QD16 ${connections}conn $image"
            record "$row" $server "$(fio_iops $rw $connections)" 1
          done
        done
      fi
      stop_server
    done
  done
  for server in spindle qemu; do
    serve $server "$sparse" qcow2
    record "nbdcopy sparse $((size_mib * 4)) MiB qcow2" $server "$(elapsed_seconds "$nbdcopy" "$uri" null:)" 0
    stop_server
  done
done

if [ $have_fio = 0 ]; then echo "fio with the nbd engine not found: fio rows skipped" >&2; fi
printf '%-34s %10s %10s %10s %12s %12s\n' row spindle qemu-nbd nbdkit "vs qemu-nbd" "vs nbdkit"
for row in $(printf '%s\n' "${!best[@]}" | sed 's/,[a-z]*$//' | sort -u | tr ' ' '~'); do
  row=${row//\~/ }
  s=${best["$row,spindle"]} q=${best["$row,qemu"]} k=${best["$row,nbdkit"]:-}
  if [[ $row == fio* ]]; then
    vq=$(echo "$s / $q" | bc -l) vk=$([ -n "$k" ] && echo "$s / $k" | bc -l || echo)
  else
    vq=$(echo "$q / $s" | bc -l) vk=$([ -n "$k" ] && echo "$k / $s" | bc -l || echo)
  fi
  figure='%.2f' # seconds; IOPS as whole numbers
  if [[ $row == fio* ]]; then figure='%.0f'; fi
  printf '%-34s %10s %10s %10s %12.2f %12s\n' "$row" "$(printf "$figure" "$s")" \
    "$(printf "$figure" "$q")" "$([ -n "$k" ] && printf "$figure" "$k" || echo n/a)" "$vq" \
    "$([ -n "$vk" ] && printf '%.2f' "$vk" || echo n/a)"
done
