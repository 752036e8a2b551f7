#!/usr/bin/env bash
# The options fuzz target (see fuzz.sh): Fuzz/fuzz-options.sh [libFuzzer options...]
exec "$(dirname "$0")/fuzz.sh" options "$@"
