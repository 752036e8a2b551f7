#!/usr/bin/env bash
# The qcow2-check fuzz target (see fuzz.sh): Fuzz/fuzz-qcow2-check.sh [libFuzzer options...]
exec "$(dirname "$0")/fuzz.sh" qcow2-check "$@"
