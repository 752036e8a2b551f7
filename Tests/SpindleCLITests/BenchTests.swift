import BlockCore
import BlockDrivers
import Testing

@testable import SpindleCLI

/// The benchmark engine: which requests it sends, how many flushes, and the
/// command's output, on Spindle's `memory` and `null-co` drivers.
@Suite struct BenchTests {
  @BlockActor
  private func memoryBackend(size: String) async throws -> BlockBackend {
    let node = try await ImageOpener.open(
      filename: nil, options: DriverOptions(["driver": "memory", "size": size]))
    return BlockBackend(root: node)
  }

  /// Offsets advance by the step and wrap at the image size, as in QEMU 7.2:
  /// with a 64 KiB image, 4 KiB buffers and a 24 KiB step the requests land at
  /// 0, 24, 48, 72 mod 64 = 8 and 32 KiB.
  @Test @BlockActor func writeOffsetsWrapLikeQEMU() async throws {
    let backend = try await memoryBackend(size: "64k")
    var parameters = BenchParameters()
    parameters.count = 5
    parameters.depth = 2
    parameters.bufferSize = 4096
    parameters.step = 24 << 10
    parameters.write = true
    parameters.pattern = 0x41
    try await BenchRunner(backend: backend, parameters: parameters).run()
    let contents = IOVector(allocating: 64 << 10)
    try await backend.read(at: 0, into: contents)
    let bytes = contents.toArray()
    let written = Set([0, 24, 48, 8, 32].map { $0 << 10 })
    for block in stride(from: 0, to: 64 << 10, by: 4096) {
      let expected: UInt8 = written.contains(block) ? 0x41 : 0
      #expect(bytes[block..<block + 4096].allSatisfy { $0 == expected }, "block at \(block)")
    }
    #expect(backend.stats.writeOps == 5)
    await backend.close()
  }

  /// QEMU 7.2 wraps at the image size, so a request can straddle the end.
  @Test @BlockActor func requestsStraddlingTheEndFail() async throws {
    let backend = try await memoryBackend(size: "64k")
    var parameters = BenchParameters()
    parameters.count = 4
    parameters.depth = 1
    parameters.bufferSize = 4096
    parameters.step = 62 << 10
    await #expect(throws: BlockError.self) {
      try await BenchRunner(backend: backend, parameters: parameters).run()
    }
    // 0 and 62 KiB: the second request reaches 2 KiB past the end.
    #expect(backend.stats.readOps == 1)
    await backend.close()
  }

  @Test @BlockActor func imageNotLargerThanTheBufferRepeatsOffsetZero() async throws {
    let backend = try await memoryBackend(size: "4k")
    var parameters = BenchParameters()
    parameters.count = 3
    parameters.bufferSize = 4096
    parameters.offset = 0
    try await BenchRunner(backend: backend, parameters: parameters).run()
    #expect(backend.stats.readOps == 3)
    await backend.close()
  }

  /// QEMU's `bench_cb` as a model: completions are deferred callbacks run
  /// newest first; each counts down, maybe flushes (draining first unless
  /// `--no-drain`), then submits up to `depth` requests. Returns the number
  /// of flushes issued.
  private static func qemuFlushes(count: Int, depth: Int, interval: Int, drain: Bool) -> Int {
    enum Completion { case request, drainedFlush, undrainedFlush }
    var remaining = count
    var inFlight = 0
    var inFlush = false
    var flushes = 0
    var callbacks: [Completion] = []
    func callback(_ completion: Completion?) {
      if completion == .undrainedFlush { return }
      if inFlush {
        inFlush = false
      } else if inFlight > 0 {
        let notSubmitted = remaining - inFlight
        remaining -= 1
        inFlight -= 1
        if interval > 0 && notSubmitted % interval == 0 {
          if inFlight == 0 || !drain {
            flushes += 1
            inFlush = drain
            callbacks.append(drain ? .drainedFlush : .undrainedFlush)
          }
          if drain { return }
        }
      }
      while remaining > inFlight && inFlight < depth {
        inFlight += 1
        callbacks.append(.request)
      }
    }
    callback(nil)
    while remaining > 0 { callback(callbacks.removeLast()) }
    return flushes
  }

  static let flushCases: [(count: Int, depth: Int, interval: Int, drain: Bool)] = [
    (10, 4, 4, true), (10, 4, 4, false), (100, 8, 10, true), (100, 8, 10, false),
    (64, 64, 64, true), (65, 1, 1, true), (65, 1, 1, false), (33, 5, 7, false), (33, 5, 7, true),
  ]

  @Test(arguments: flushCases)
  @BlockActor func flushesFollowQEMU(
    _ scenario: (count: Int, depth: Int, interval: Int, drain: Bool)
  )
    async throws
  {
    let backend = try await memoryBackend(size: "1M")
    var parameters = BenchParameters()
    parameters.count = scenario.count
    parameters.depth = scenario.depth
    parameters.flushInterval = scenario.interval
    parameters.drainOnFlush = scenario.drain
    parameters.write = true
    parameters.bufferSize = 512
    try await BenchRunner(backend: backend, parameters: parameters).run()
    #expect(backend.stats.writeOps == scenario.count)
    #expect(
      backend.stats.flushOps
        == Self.qemuFlushes(
          count: scenario.count, depth: scenario.depth, interval: scenario.interval,
          drain: scenario.drain))
    await backend.close()
  }

  @Test func commandOutput() async {
    let result = await runSpindle(
      [
        "qemu-img", "bench", "-w", "-c", "100", "-d", "8", "--flush-interval=16", "-o", "4k",
        "-s", "1k", "--image-opts", "driver=null-co,size=1M",
      ]
    ).masked()
    #expect(
      result.output == """
        Sending 100 write requests, 1024 bytes each, 8 in parallel (starting at offset 4096, step size 1024)
        Sending flush every 16 requests
        Run completed in TIME

        """)
    #expect(result.status == 0)
    #expect(result.error.isEmpty)
  }

  @Test func failedRequestsEndTheRun() async {
    let result = await runSpindle(
      ["spindle", "bench", "-c", "10", "-o", "2M", "--image-opts", "driver=null-co,size=1M"])
    #expect(result.error == "qemu-img: Failed request: Input/output error\n")
    #expect(result.status == 1)
    #expect(!result.output.contains("Run completed"))
  }

  /// qemu-img 7.2 accepts a queue depth of 0 and then waits forever; Spindle
  /// refuses it.
  @Test func zeroDepthIsRefused() async {
    let result = await runSpindle(
      ["qemu-img", "bench", "-d", "0", "--image-opts", "driver=null-co"])
    #expect(result.error == "qemu-img: Invalid queue depth specified\n")
    #expect(result.status == 1)
  }
}
