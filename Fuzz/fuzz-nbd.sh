#!/usr/bin/env bash
# The nbd fuzz target (see fuzz.sh): Fuzz/fuzz-nbd.sh [libFuzzer options...]
exec "$(dirname "$0")/fuzz.sh" nbd "$@"
