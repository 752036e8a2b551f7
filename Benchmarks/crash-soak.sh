#!/usr/bin/env bash
# SIGKILL crash soak of `spindle io` over qcow2 workloads (see crash-soak.py):
#   Benchmarks/crash-soak.sh [--iterations N] [--seed S] [--spindle PATH] [--keep DIR]
# Needs qemu-img and qemu-io, and a built spindle (.build/debug/spindle by default).
set -euo pipefail
exec python3 "$(dirname "$0")/crash-soak.py" "$@"
