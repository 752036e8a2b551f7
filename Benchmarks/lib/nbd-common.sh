# Shared set-up of the NBD benchmarks (sourced by bench-nbd.sh and
# bench-nbd-client.sh; not a script of its own).
#
# After sourcing: $package (the repository), $spindle (built in release mode
# when missing), $work (a fresh directory under $directory, removed on exit
# together with the server started by serve_on_socket).

package=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
spindle=${SPINDLE:-$package/.build/release/spindle}
if [ ! -x "$spindle" ]; then
  (cd "$package" && swift build -c release --product spindle >&2)
fi

work=$(mktemp -d "${directory:-${TMPDIR:-/tmp}}/$(basename "$0" .sh).XXXXXX")
server_pid=
bench_cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap bench_cleanup EXIT

# Runs "$@" in the background as the server and returns once the Unix socket
# $socket exists (the caller removes a stale one first).
serve_on_socket() {
  "$@" &
  server_pid=$!
  for _ in $(seq 1 400); do
    [ -S "$socket" ] && return 0
    sleep 0.05
  done
  echo "$1 did not start" >&2
  exit 1
}

# Stops the server serve_on_socket started.
stop_server() {
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}

# Wall seconds of "$@" (its stdout discarded).
elapsed_seconds() {
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}

# Creates $1, a sparse qcow2 of 4 x $2 MiB with $2/8 MiB of data in 1 MiB
# runs every 32 MiB (block status and holes matter when it is read).
make_sparse_qcow2() {
  local path=$1 size_mib=$2 script=() mib
  "$qemu_img" create -q -f qcow2 "$path" "$((size_mib * 4))M"
  for ((mib = 0; mib < size_mib * 4; mib += 32)); do
    script+=(-c "write -P $((mib / 32 % 250 + 1)) ${mib}M 1M")
  done
  "$qemu_io" -f qcow2 "${script[@]}" "$path" >/dev/null
}
