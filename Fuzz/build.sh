#!/usr/bin/env bash
# Builds the libFuzzer targets (one executable, Fuzz/.build-fuzz/debug/SpindleFuzz)
# with libFuzzer's coverage and AddressSanitizer. Debug: the main package's
# modules are then built with -enable-testing, which the targets'
# `@testable import`s need. One `-sanitize=fuzzer,address`: given as two
# flags (as `--sanitize=fuzzer --sanitize=address` passes them), the Swift
# driver keeps only the last and the code gets no coverage counters.
set -euo pipefail
cd "$(dirname "$0")"
if [ -d /opt/swift/usr/bin ]; then export PATH="/opt/swift/usr/bin:$PATH"; fi
swift build --scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer,address "$@"
