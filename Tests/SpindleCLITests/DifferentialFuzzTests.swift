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
  /// Where placement may differ for a known reason (concurrent requests,
  /// compressed writes), where clusters landed in the file (map offsets, the
  /// image's end, fragmentation) is not compared unless `strictAllocation`:
  /// see ``DifferentialFuzzRegressionTests``.
  static func compare(_ script: DifferentialFuzzScript, strictAllocation: Bool = false)
    async throws
  {
    let relaxed = script.placementMayDiffer && !strictAllocation
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
    let qemuCheck = try await runProcess("qemu-img", ["check", qemuImage]).masked(
      replacing: qemuImage)
    let spindleCheck = try await runProcess("qemu-img", ["check", spindleImage]).masked(
      replacing: spindleImage)
    if qemuCheck.status == 2 && spindleCheck.status == 0 {
      // QEMU corrupted its own image (see
      // ``DifferentialFuzzRegressionTests/compressedWriteIntoClusterFreedByShrinking()``):
      // it is no oracle for this script's contents.
      print("seed \(script.seed): QEMU's image is corrupt, Spindle's is clean")
      return
    }
    if relaxed {
      #expect(
        withoutPlacement(spindleCheck) == withoutPlacement(qemuCheck),
        "\(context)\n\(qemuCheck)\n\(spindleCheck)")
    } else {
      #expect(spindleCheck == qemuCheck, "\(context)\n\(qemuCheck)\n\(spindleCheck)")
    }
    #expect(
      try await qemuImgStatus(["compare", "-q", qemuImage, spindleImage]) == 0,
      "contents differ: \(context)")
    let qemuMap = try await runProcess("qemu-img", ["map", "--output=json", qemuImage])
    let spindleMap = try await runProcess("qemu-img", ["map", "--output=json", spindleImage])
    if relaxed {
      // Clusters may be taken in another order.
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

  /// A `qemu-img map --output=json` listing without host offsets, extents
  /// of the same kind merged (they were apart only by their offsets). Data
  /// that reads as zeroes because its host cluster is a hole in the file
  /// counts as data: which host clusters are holes depends on placement.
  private static func withoutOffsets(_ map: String) -> [String] {
    var merged: [(start: Int, length: Int, kind: String)] = []
    for line in map.split(separator: "\n") {
      guard let start = line.firstMatch(of: #/"start": (\d+)/#).flatMap({ Int($0.output.1) }),
        let length = line.firstMatch(of: #/"length": (\d+)/#).flatMap({ Int($0.output.1) })
      else { continue }
      let kind = String(
        line.replacing(#/, "offset": \d+/#, with: "").replacing(#/.*"length": \d+/#, with: "")
          .replacing(#/"zero": true, "data": true/#, with: #""zero": false, "data": true"#))
      if let last = merged.last, last.kind == kind, last.start + last.length == start {
        merged[merged.count - 1].length += length
      } else {
        merged.append((start, length, kind))
      }
    }
    return merged.map { "\($0.start)+\($0.length)\($0.kind)" }
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
      script.hasCompressedWrites = false
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
    script.hasCompressedWrites = false
    try await DifferentialFuzzTests.compare(script)
    await withKnownIssue("QEMU allocates before the copy-on-write frees the compressed cluster") {
      try await DifferentialFuzzTests.compare(script, strictAllocation: true)
    }
  }

  /// Seed 1020 (a known divergence in the compressed-cluster allocator, not
  /// fixed here: reported): QEMU keeps the offset where the last compressed
  /// cluster ended and puts the next compressed cluster there even after
  /// that host cluster was freed (its refcount goes from 0 back to 1);
  /// Spindle takes a new cluster. Contents, check results and allocation
  /// are the same; the compressed data lies one cluster further.
  @Test("a compressed write after the last compressed cluster was overwritten")
  func compressedWriteAfterFreedCompressedCluster() async throws {
    var script = DifferentialFuzzScript(seed: 0)
    script.createOptions = "cluster_size=65536"
    script.size = 1 << 20
    script.backingChain = false
    script.commands = [
      "write -c -P 1 0 65536", "write -P 4 0 65536", "write -P 5 65536 131072",
      "write -c -P 7 262144 65536", "map",
    ]
    script.hasConcurrentRequests = false
    script.hasCompressedWrites = true
    try await DifferentialFuzzTests.compare(script)
    await withKnownIssue("QEMU reuses the freed cluster's tail for the next compressed cluster") {
      try await DifferentialFuzzTests.compare(script, strictAllocation: true)
    }
  }

  /// Seed 1463 (a known divergence in the qcow2 compressed write path, not
  /// fixed here: reported): a compressed write of several clusters whose
  /// first cluster is already allocated fails with EIO in both, but QEMU
  /// runs one task per cluster concurrently, so the clusters after the
  /// first are written (compressed) anyway; Spindle stops at the first and
  /// writes none. The output is the same; the contents differ.
  @Test("a failing compressed write of several clusters: the clusters after the failure")
  func failingMultiClusterCompressedWrite() async throws {
    var script = DifferentialFuzzScript(seed: 0)
    script.createOptions = "cluster_size=65536,compat=0.10"
    script.size = 1 << 20
    script.backingChain = false
    script.commands = [
      "write -P 7 327680 262144", "discard 458752 196608", "write -c -P 9 393216 262144",
      "read -v 458752 16", "map",
    ]
    script.hasConcurrentRequests = false
    script.hasCompressedWrites = true
    await withKnownIssue("QEMU writes the clusters after the failing one") {
      try await DifferentialFuzzTests.compare(script)
    }
  }

  /// Seeds 1492 and 1728: QEMU 7.2 corrupts its own image, Spindle does not.
  /// A shrinking truncate frees the host cluster that holds the last
  /// compressed cluster; QEMU keeps the offset after it for the next
  /// compressed cluster, an allocating write takes the freed cluster, and
  /// the next compressed write goes into that cluster too (refcount 2,
  /// `OFLAG_COPIED` error, the first write's data overwritten). Spindle's
  /// image must check clean and keep both writes; QEMU's is not compared.
  @Test("a compressed write after a shrink freed the last compressed cluster")
  func compressedWriteIntoClusterFreedByShrinking() async throws {
    let fixture = try ImageFixture()
    let image = fixture.path("shrunk.qcow2")
    try await qemuImg(["create", "-q", "-f", "qcow2", "-o", "cluster_size=16384", image, "1M"])
    let commands = [
      "write -c -P 3 512k 16k", "truncate 256k", "write -P 6 0 32k", "write -c -P 7 128k 16k",
      "read -P 6 0 32k", "read -P 7 128k 16k",
    ]
    let spindle = await runSpindle(
      ["qemu-io", "-f", "qcow2", image] + commands.flatMap { ["-c", $0] })
    #expect(spindle.status == 0 && !spindle.output.contains("failed"), "\(spindle)")
    #expect(try await qemuImgStatus(["check", "-q", image]) == 0)
    let reread = try await runProcess(
      "qemu-io", ["-r", "-f", "qcow2", image, "-c", "read -P 6 0 32k", "-c", "read -P 7 128k 16k"])
    #expect(!reread.output.contains("failed"), "\(reread)")
  }
}
