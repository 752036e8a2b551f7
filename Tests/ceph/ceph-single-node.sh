#!/usr/bin/env bash
# Throwaway single-node Ceph (Debian 12, Pacific 16.2.15) bound to 127.0.0.1 only:
# 1 mon, 1 OSD (memstore by default), optional mgr, one pool with RBD enabled.
# The RBD tests (Tests/SpindleCLITests/RBD*Tests.swift) find it through
# CEPH_CONF; .ci/run starts it before `swift test` and stops it on exit.
#   eval "$(ceph-single-node.sh start)"  # prints: export CEPH_CONF=... SPINDLE_CEPH_POOL=...
#   ceph-single-node.sh status | stop     # stop: TERM daemons by PID, rm -rf dir
#   ceph-single-node.sh stop-mon | kill-osd | start-osd  # fault tests (bluestore
#     for kill-osd: memstore loses everything)
# Packages: apt-get install -y --no-install-recommends ceph-mon ceph-osd
#   ceph-common librbd-dev qemu-utils qemu-block-extra  (+ ceph-mgr for CEPH_MGR=1)
# Knobs: CEPH_DIR=${TMPDIR:-/tmp}/spindle-ceph CEPH_PORT=26600 (uses PORT..PORT+99;
#   keep it below 32768, Linux's ephemeral range: the tests' own outgoing
#   connections take ports there and a mon found 40900 taken in CI)
#   CEPH_STORE=memstore|bluestore CEPH_MGR=0|1 CEPH_AUTH=cephx|none
#   CEPH_POOL=testpool CEPH_BYTES=4294967296 (memstore cap / sparse bluestore file)
set -euo pipefail
D=${CEPH_DIR:-${TMPDIR:-/tmp}/spindle-ceph}; P=${CEPH_PORT:-26600}; STORE=${CEPH_STORE:-memstore}
MGR=${CEPH_MGR:-0}; AUTH=${CEPH_AUTH:-cephx}; POOL=${CEPH_POOL:-testpool}
BYTES=${CEPH_BYTES:-4294967296}; export CEPH_CONF=$D/ceph.conf
log() { echo "[ceph-single-node] $*" >&2; }
wait_for() { # seconds, what, command...
  local t=$1 what=$2; shift 2
  for _ in $(seq $((t * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  log "timeout waiting for $what"; return 1; }
stop() {
  for n in mgr.x osd.0 mon.a; do                    # clients first, mon last
    local f=$D/run/$n.pid pid; [ -s "$f" ] || continue; pid=$(cat "$f")
    [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "ceph-${n%%.*}" ] || continue
    kill -TERM "$pid"
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { log "SIGKILL $n ($pid)"; kill -KILL "$pid"; }
  done
  case "$D" in */spindle-ceph*|/tmp/?*) rm -rf "$D" ;; esac; }
failed() { log "start failed; log tails:"; tail -n 15 "$D"/log/* >&2 || true
  [ "${CEPH_KEEP:-0}" = 1 ] || stop; }
start() {
  [ -e "$D" ] && { log "$D exists; run stop first"; exit 1; }
  trap failed ERR
  mkdir -p "$D"/{run,log,crash,mon.a,osd.0,mgr.x}
  local fsid mon="[v2:127.0.0.1:$P,v1:127.0.0.1:$((P + 1))]"; fsid=$(uuidgen)
  cat > "$CEPH_CONF" <<EOF
[global]
fsid = $fsid
mon_host = $mon
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv4 = true
ms_bind_ipv6 = false
ms_bind_port_min = $((P + 10))
ms_bind_port_max = $((P + 99))
auth_cluster_required = $AUTH
auth_service_required = $AUTH
auth_client_required = $AUTH
keyring = $D/keyring
run_dir = $D/run
admin_socket = $D/run/\$name.asok
pid_file = $D/run/\$name.pid
log_file = $D/log/\$name.log
crash_dir = $D/crash
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
[mon]
mon_data = $D/mon.\$id
mon_data_avail_warn = 2
mon_cluster_log_file = $D/log/cluster.log
mon_mgr_mkfs_grace = 86400
mgr_initial_modules = iostat
auth_allow_insecure_global_id_reclaim = false
[osd]
osd_data = $D/osd.\$id
osd_objectstore = $STORE
memstore_device_bytes = $BYTES
bluestore_block_create = true
bluestore_block_size = $BYTES
osd_memory_target = 939524096
[mgr]
mgr_data = $D/mgr.\$id
[client]
# Many clients run at once (tests in parallel): one admin socket each would
# collide on client.admin.asok and print a bind error on stderr.
admin_socket =
EOF
  ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$D/keyring" --gen-key -n client.admin --cap mon 'allow *' \
    --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "$mon" "$D/monmap" >/dev/null
  ceph-mon -i a --mkfs --monmap "$D/monmap" --keyring "$D/keyring"
  ceph-mon -i a                                # daemonizes; pid in run/mon.a.pid
  wait_for 30 "mon quorum" ceph --connect-timeout 2 mon stat
  local uuid key; uuid=$(uuidgen); key=$(ceph-authtool --gen-print-key)
  echo "{\"cephx_secret\": \"$key\"}" > "$D/osd.0/new.json"
  ceph osd new "$uuid" -i "$D/osd.0/new.json" >/dev/null    # allocates osd id 0
  ceph-authtool "$D/keyring" --add-key "$key" -n osd.0 >/dev/null
  ceph-osd -i 0 --mkfs --key "$key" --osd-uuid "$uuid" 2>>"$D/log/mkfs.log"
  ceph-osd -i 0 2>>"$D/log/osd.0.stderr"
  wait_for 60 "osd up" sh -c "ceph osd dump -f json | grep -q '\"up\":1'"
  if [ "$MGR" = 1 ]; then
    ceph auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' \
      mds 'allow *' >> "$D/keyring"
    ceph-mgr -i x
    wait_for 90 "mgr" sh -c "ceph mgr stat -f json | grep -q '\"available\":true'"
  fi
  ceph osd pool create "$POOL" 8 8 >/dev/null 2>&1
  timeout 60 rbd pool init "$POOL"                # blocks until the PGs are active
  trap - ERR
  log "ready (pool $POOL, mon $mon, auth $AUTH, store $STORE)"
  echo "export CEPH_CONF=$CEPH_CONF SPINDLE_CEPH_POOL=$POOL"; }
kill_osd() { local pid; pid=$(cat "$D/run/osd.0.pid")
  [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = ceph-osd ] || { log "no osd"; exit 1; }
  kill -KILL "$pid"; for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  ceph osd down 0 >/dev/null 2>&1 || true; }  # no peer would report it for 15 min
start_osd() { ceph-osd -i 0 2>>"$D/log/osd.0.stderr"
  wait_for 60 "osd up" sh -c "ceph osd dump -f json | grep -q '\"up\":1'"; }
stop_mon() { local f=$D/run/mon.a.pid pid; pid=$(cat "$f")
  [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = ceph-mon ] || { log "no mon"; exit 1; }
  kill -TERM "$pid"; for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid"; }
case "${1:-}" in
  start) start ;; stop) stop ;; status) ceph -s ;; stop-mon) stop_mon ;;
  kill-osd) kill_osd ;; start-osd) start_osd ;;
  *) echo "usage: $0 start|stop|status|stop-mon|kill-osd|start-osd" >&2; exit 2 ;;
esac
