import BlockTestSupport
import Foundation
import Testing

/// Differential fuzzing of `spindle io` against `qemu-io`: random scripts
/// (``DifferentialFuzzScript``) on random qcow2 configurations run through
/// both on identical copies of an image; their output and exit status
/// (timings masked), the guest content (`qemu-img compare`), `qemu-img check`
/// and `qemu-img map --output=json` must be the same.
///
/// CI runs a fixed slice of seeds; `SPINDLE_DIFF_FUZZ_COUNT=N` (and
/// `SPINDLE_DIFF_FUZZ_START=S`, default 1000) runs N more seeds from S:
/// the long mode. A divergence names its seed and script; each one found
/// became a named regression test below.
@Suite(.requires("qemu-img", "qemu-io"), .timeLimit(.minutes(60)))
struct DifferentialFuzzTests {
  /// The seeds CI runs.
  static let ciSeeds: [UInt64] = Array(1...150)

  /// The long mode's seeds, from the environment (none by default).
  static let longSeeds: [UInt64] = {
    let environment = ProcessInfo.processInfo.environment
    guard let count = environment["SPINDLE_DIFF_FUZZ_COUNT"].flatMap(UInt64.init), count > 0
    else { return [] }
    let start = environment["SPINDLE_DIFF_FUZZ_START"].flatMap(UInt64.init) ?? 1000
    return Array(start..<start + count)
  }()

  @Test("a fixed slice of seeds", arguments: ciSeeds)
  func fixedSeed(_ seed: UInt64) async throws {
    try await Self.compare(DifferentialFuzzScript(seed: seed))
  }

  @Test(
    "the long mode's seeds", .enabled(if: !longSeeds.isEmpty, "SPINDLE_DIFF_FUZZ_COUNT is unset"),
    arguments: longSeeds)
  func longSeed(_ seed: UInt64) async throws {
    try await Self.compare(DifferentialFuzzScript(seed: seed))
  }

  /// Runs `script` through both tools and compares everything observable.
  /// Where requests ran concurrently, where clusters landed in the file (map
  /// offsets, the image's end, fragmentation) is not compared unless
  /// `strictAllocation`: see ``DifferentialFuzzRegressionTests``.
  static func compare(_ script: DifferentialFuzzScript, strictAllocation: Bool = false)
    async throws
  {
    let relaxed = script.hasConcurrentRequests && !strictAllocation
    let fixture = try ImageFixture()
    let top = fixture.path("top.qcow2")
    var create = ["create", "-q", "-f", "qcow2", "-o", script.createOptions]
    if script.backingChain {
      let base = try fixture.makeImage("base.raw", size: 768 << 10)
      create += ["-b", base, "-F", "raw"]
    }
    try await qemuImg(create + [top, "\(script.size)"])
    let qemuImage = try fixture.copy(top, to: "qemu.qcow2")
    let spindleImage = try fixture.copy(top, to: "spindle.qcow2")
    func arguments(_ image: String) -> [String] {
      ["-f", "qcow2", image] + script.commands.flatMap { ["-c", $0] }
    }
    let qemu = try await runProcess("qemu-io", arguments(qemuImage)).masked(replacing: qemuImage)
    let spindle = await runSpindle(["qemu-io"] + arguments(spindleImage))
      .masked(replacing: spindleImage)
    let context = script.description
    if script.hasConcurrentRequests {
      #expect(
        sortedLines(spindle.output) == sortedLines(qemu.output), "\(context)\n\(qemu)\n\(spindle)")
      #expect(spindle.error == qemu.error, "\(context)\n\(qemu)\n\(spindle)")
      #expect(spindle.status == qemu.status, "\(context)")
    } else {
      #expect(spindle == qemu, "\(context)\n\(qemu)\n\(spindle)")
    }
    #expect(
      try await qemuImgStatus(["compare", "-q", qemuImage, spindleImage]) == 0,
      "contents differ: \(context)")
    let qemuCheck = try await runProcess("qemu-img", ["check", qemuImage]).masked(
      replacing: qemuImage)
    let spindleCheck = try await runProcess("qemu-img", ["check", spindleImage]).masked(
      replacing: spindleImage)
    if relaxed {
      #expect(
        withoutPlacement(spindleCheck) == withoutPlacement(qemuCheck),
        "\(context)\n\(qemuCheck)\n\(spindleCheck)")
    } else {
      #expect(spindleCheck == qemuCheck, "\(context)\n\(qemuCheck)\n\(spindleCheck)")
    }
    let qemuMap = try await runProcess("qemu-img", ["map", "--output=json", qemuImage])
    let spindleMap = try await runProcess("qemu-img", ["map", "--output=json", spindleImage])
    if relaxed {
      // Concurrent allocations may take clusters in another order.
      #expect(
        withoutOffsets(spindleMap.output) == withoutOffsets(qemuMap.output),
        "\(context)\n\(qemuMap.output)\n\(spindleMap.output)")
    } else {
      #expect(
        spindleMap.output == qemuMap.output, "\(context)\n\(qemuMap.output)\n\(spindleMap.output)")
    }
  }

  private static func sortedLines(_ text: String) -> [String] {
    text.split(separator: "\n").map(String.init).sorted()
  }

  private static func withoutOffsets(_ map: String) -> String {
    map.replacing(#/, "offset": \d+/#, with: "")
  }

  /// A check report without what depends on where clusters landed.
  private static func withoutPlacement(_ check: ToolResult) -> ToolResult {
    var result = check
    result.output = check.output.replacing(#/Image end offset: \d+/#, with: "Image end offset: N")
      .replacing(#/\d+\.\d+% fragmented/#, with: "N% fragmented")
    return result
  }
}

/// The divergences the differential fuzzer found, each a named script run
/// through both tools (the seeds that found them still run in the slice).
@Suite(.requires("qemu-img", "qemu-io"))
struct DifferentialFuzzRegressionTests {
  /// Seeds 16, 32 and 39: `info` printed the VM state offset of an
  /// extended-L2 image as if its L2 entries were 8 bytes (512 MiB where
  /// QEMU says 256 MiB for 64 KiB clusters).
  @Test("info: the VM state offset of an image with extended L2 entries")
  func vmStateOffsetWithExtendedL2() async throws {
    for options in ["cluster_size=65536,extended_l2=on", "cluster_size=16384,extended_l2=on"] {
      var script = DifferentialFuzzScript(seed: 0)
      script.createOptions = options
      script.size = 2 << 20
      script.backingChain = false
      script.commands = ["info", "truncate 300M", "info"]
      script.hasConcurrentRequests = false
      try await DifferentialFuzzTests.compare(script)
    }
  }

  /// Seed 18 (a known divergence, not fixed here: the ordering of concurrent
  /// requests belongs to the engine and qcow2 write path): of four
  /// concurrent writes, one overwrites part of a compressed cluster. QEMU
  /// starts the next writes while that one reads the compressed data, so
  /// they allocate before it frees the compressed cluster, and one lands
  /// past the hole left behind; Spindle's copy-on-write finishes first and
  /// the later write reuses the freed cluster. Data, check results and
  /// allocation are the same; only where one cluster lies in the file (and
  /// so the image's end) differs. QEMU is deterministic here.
  @Test("concurrent writes over a compressed cluster: placement of the next allocation")
  func concurrentWriteOverCompressedCluster() async throws {
    var script = DifferentialFuzzScript(seed: 0)
    script.createOptions = "cluster_size=65536,compat=0.10"
    script.size = 2 << 20
    script.backingChain = false
    script.commands = [
      "write -P 1 1602163 58078", "write -P 2 1071841 152101", "write -P 3 1769472 65536",
      "write -c -P 4 65536 65536", "aio_write -P 5 803869 22057", "aio_write -P 6 85523 15143",
      "aio_write -P 7 1121478 58170", "aio_write -P 8 1708648 24761", "aio_flush",
    ]
    script.hasConcurrentRequests = true
    try await DifferentialFuzzTests.compare(script)
    await withKnownIssue("QEMU allocates before the copy-on-write frees the compressed cluster") {
      try await DifferentialFuzzTests.compare(script, strictAllocation: true)
    }
  }
}
