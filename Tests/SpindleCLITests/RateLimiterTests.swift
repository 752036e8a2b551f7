import BlockTestSupport
import Foundation
import Testing

@testable import SpindleCLI

/// ``RateLimiter``'s schedule, checked against QEMU's `RateLimit` arithmetic
/// with times given by the test (no clock).
@Suite struct RateLimiterTests {
  /// Milliseconds in nanoseconds.
  static func ms(_ value: UInt64) -> UInt64 { value * 1_000_000 }

  @Test func quotaIsTheRateTimesTheSlice() {
    #expect(RateLimiter(bytesPerSecond: 1000).sliceQuota == 100)
    #expect(RateLimiter(bytesPerSecond: 10 << 20).sliceQuota == 1_048_576)
    // A non-zero rate allows at least a byte a slice; 0 is no limit.
    #expect(RateLimiter(bytesPerSecond: 1).sliceQuota == 1)
    #expect(RateLimiter(bytesPerSecond: 0).isLimited == false)
    #expect(RateLimiter(bytesPerSecond: UInt64.max).sliceQuota > 0)
  }

  @Test func unlimitedNeverWaits() {
    var limiter = RateLimiter(bytesPerSecond: 0)
    for step in 0..<5 {
      #expect(limiter.delay(dispatching: 1 << 30, at: UInt64(step)) == 0)
    }
  }

  /// 1000 bytes per second, 100 ms slices: 100 bytes a slice. A slice over
  /// quota is stretched to as many slices as were dispatched; the wait is
  /// until its end; a new slice starts once the stretched one is over.
  @Test func scheduleFollowsQEMUsSlices() {
    var limiter = RateLimiter(bytesPerSecond: 1000)
    // Times from 1 s on: a clock at 0 would look like the end of the initial
    // (empty) slice, as in QEMU.
    func ms(_ value: UInt64) -> UInt64 { Self.ms(1000 + value) }
    let steps: [(bytes: UInt64, at: UInt64, wait: UInt64)] = [
      (50, ms(0), 0),  // under quota
      (50, ms(10), Self.ms(90)),  // quota reached: wait for the slice's end
      (30, ms(100), Self.ms(30)),  // same slice (not over yet), now 1.3 slices long
      (0, ms(120), Self.ms(10)),  // asking: still blocked for 10 ms
      (0, ms(130) + 1, 0),  // over: a new slice starts at 130 ms + 1 ns
      (250, ms(200), Self.ms(180) + 1),  // 2.5 slices from 130 ms + 1 ns
      (10, ms(400), 0),  // a fresh slice
    ]
    for (index, step) in steps.enumerated() {
      let wait = limiter.delay(dispatching: step.bytes, at: step.at)
      #expect(wait == step.wait, "step \(index): waited \(wait)")
    }
  }

  /// QEMU's convert pace: 2 MiB chunks at 10 MiB/s (1 MiB a slice) wait
  /// 200 ms after the first chunk, then 200 ms after each chunk sent once
  /// the previous wait is over.
  @Test func chunksAtTenMegabytesPerSecond() {
    var limiter = RateLimiter(bytesPerSecond: 10 << 20)
    var now = Self.ms(1000)
    var waits: [UInt64] = []
    for _ in 0..<4 {
      let wait = limiter.delay(dispatching: 2 << 20, at: now)
      waits.append(wait)
      now += wait + 1
    }
    #expect(waits == [Self.ms(200), Self.ms(200), Self.ms(200), Self.ms(200)])
  }
}

/// `convert -r` and `commit -r` against qemu-img: the same output, status
/// and images; and Spindle does take at least as long as the rate allows.
@Suite(.requires("qemu-img", "qemu-io"))
struct DifferentialRateLimitTests {
  /// A 3 MiB raw image of data; a qcow2 overlay on it with two data ranges.
  static func setup(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    func io(_ format: String, _ name: String, _ commands: [String]) async throws {
      let result = try await runProcess(
        "qemu-io", ["-f", format] + commands.flatMap { ["-c", $0] } + [path(name)])
      #expect(result.status == 0, "\(result)")
    }
    try await qemuImg(["create", "-q", "-f", "raw", path("base.raw"), "3M"])
    try await io("raw", "base.raw", ["write -P 1 0 3M"])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", path("top.qcow2"),
    ])
    try await io(
      "qcow2", "top.qcow2", ["write -P 2 0 512k", "write -P 3 1M 64k", "write -P 4 2M 1M"])
  }

  static let runs: [(arguments: [String], output: String, format: String)] = [
    (["convert", "-r", "100M", "-f", "raw", "DIR/base.raw", "DIR/out"], "out", "raw"),
    (["convert", "-r", "1G", "-O", "qcow2", "DIR/top.qcow2", "DIR/out"], "out", "qcow2"),
    (["convert", "-r", "0", "-f", "raw", "DIR/base.raw", "DIR/out"], "out", "raw"),
    (["commit", "-r", "100M", "DIR/top.qcow2"], "base.raw", "raw"),
    (["commit", "-r", "0", "-d", "DIR/top.qcow2"], "base.raw", "raw"),
  ]

  @Test(arguments: runs)
  func sameResultWithARateLimit(
    _ run: (arguments: [String], output: String, format: String)
  ) async throws {
    let result = try await runImageCommand(run.arguments, setup: Self.setup)
    #expect(result.spindle == result.qemu, "\(result)")
    #expect(result.spindle.status == 0, "\(result)")
    let compared = try await result.compareContents(run.output, format: run.format)
    #expect(compared.status == 0, "\(compared)")
  }

  @Test(arguments: [["-r", "x"], ["-r", "-1"], ["-r", "1Z"]])
  func badRatesAreRefusedAlike(_ rate: [String]) async throws {
    for command in [
      ["convert"] + rate + ["DIR/base.raw", "DIR/out"], ["commit"] + rate + ["DIR/top.qcow2"],
    ] {
      let result = try await runImageCommand(command, setup: Self.setup)
      #expect(result.spindle == result.qemu, "\(result)")
      #expect(result.spindle.status != 0)
    }
  }

  /// 3 MiB at 10 MiB/s in 2 MiB chunks: the second chunk waits for the
  /// 200 ms the first used up; the convert cannot be faster than that.
  @Test func convertIsPacedByTheRate() async throws {
    let fixture = try ImageFixture()
    try await Self.setup(fixture.path(""))
    let start = ContinuousClock.now
    let result = await runSpindle([
      "qemu-img", "convert", "-r", "10M", "-f", "raw", fixture.path("base.raw"),
      fixture.path("out"),
    ])
    let elapsed = ContinuousClock.now - start
    #expect(result.status == 0, "\(result)")
    #expect(elapsed >= .milliseconds(190), "took \(elapsed)")
  }

  /// The overlay's data (512 KiB, then 64 KiB and 1 MiB at 2 MiB/s, 100 ms
  /// slices of 209,715 bytes): 250 ms after the first range, then 519 ms
  /// after the third, which is accounted in the second's slice.
  @Test func commitIsPacedByTheRate() async throws {
    let fixture = try ImageFixture()
    try await Self.setup(fixture.path(""))
    let start = ContinuousClock.now
    let result = await runSpindle([
      "qemu-img", "commit", "-q", "-r", "2M", fixture.path("top.qcow2"),
    ])
    let elapsed = ContinuousClock.now - start
    #expect(result.status == 0, "\(result)")
    #expect(elapsed >= .milliseconds(700), "took \(elapsed)")
  }
}
