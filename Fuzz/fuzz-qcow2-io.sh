#!/usr/bin/env bash
# The qcow2-io fuzz target (see fuzz.sh): Fuzz/fuzz-qcow2-io.sh [libFuzzer options...]
exec "$(dirname "$0")/fuzz.sh" qcow2-io "$@"
