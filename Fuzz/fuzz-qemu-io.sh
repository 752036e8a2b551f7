#!/usr/bin/env bash
# The qemu-io fuzz target (see fuzz.sh): Fuzz/fuzz-qemu-io.sh [libFuzzer options...]
exec "$(dirname "$0")/fuzz.sh" qemu-io "$@"
