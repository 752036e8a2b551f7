import BlockTestSupport
import Foundation
import Testing

/// `qemu-img check` against Spindle's on identical copies of images whose
/// snapshot table was damaged by hand: standard output, standard error,
/// exit status, and after a repair the repaired files (byte for byte, clean
/// for qemu-img, same guest contents).
@Suite struct DifferentialCheckSnapshotTests {
  /// The undamaged image, built once (copies keep its snapshots' dates).
  static let template = Task { try await ImageTemplate.build(makeImage) }
  /// The same with 512-byte clusters (a rewritten table spans clusters).
  static let smallClusterTemplate = Task {
    try await ImageTemplate.build { try await makeImage($0, ["-o", "cluster_size=512"]) }
  }

  /// How each damaged image `t.qcow2` is made from one with two snapshots
  /// (called with the run's directory).
  static let scenarios: [String: @Sendable (SnapshotTable) throws -> Void] = [
    "count-larger-than-table": { table in
      try table.image.write(60, table.count + 2, width: 4)
    },
    "count-above-limit": { table in
      try table.image.write(60, 70_000, width: 4)
    },
    "table-offset-unaligned": { table in
      try table.image.write(64, table.offset + 8, width: 8)
    },
    "extra-data-too-large": { table in
      try table.image.write(try table.entry(1) + 36, 5000, width: 4)
    },
    "extra-data-incomplete": { table in
      try table.image.write(try table.entry(1) + 36, 8, width: 4)
    },
    "extra-data-past-table": { table in
      try table.image.write(try table.entry(1) + 36, 1000, width: 4)
    },
    "name-past-table": { table in
      try table.image.write(try table.entry(1) + 14, 0xFFFF, width: 2)
    },
    "id-past-table": { table in
      try table.image.write(try table.entry(0) + 12, 0x4000, width: 2)
    },
    "l1-offset-unaligned": { table in
      let entry = try table.entry(1)
      try table.image.write(entry, try table.image.read(entry, width: 8) + 0x200, width: 8)
    },
    "l1-size-too-large": { table in
      try table.image.write(try table.entry(1) + 8, 0x400_0000, width: 4)
    },
  ]

  static let variants: [[String]] = [[], ["--output=json"], ["-r", "leaks"], ["-r", "all"]]

  /// Every scenario with every variant, but the 65536 snapshots left by
  /// repairing "count-above-limit" (``repairAboveLimitMatches()``: its
  /// 65536 lines are too many for the harness's output masking).
  static let cases: [(String, [String])] = scenarios.keys.sorted().flatMap { scenario in
    variants.map { (scenario, $0) }
  }.filter { $0 != ("count-above-limit", ["-r", "all"]) }

  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: cases)
  func checkMatches(_ scenario: String, _ options: [String]) async throws {
    let damage = try #require(Self.scenarios[scenario])
    let run = try await runImageCommand(["check"] + options + ["DIR/t.qcow2"]) { directory in
      try await Self.template.value.copy(into: directory)
      try damage(try SnapshotTable(Image("\(directory)/t.qcow2")))
    }
    #expect(run.spindle == run.qemu, "\(run)")
    if options.contains("-r") {
      #expect(run.sameBytes("t.qcow2"), "repaired images differ")
      let qemuCheck = try await runProcess("qemu-img", ["check", "\(run.qemuDirectory)/t.qcow2"])
      let spindleCheck = try await run.checkSpindleImage("t.qcow2")
      #expect(spindleCheck.status == qemuCheck.status, "\(spindleCheck)")
      if qemuCheck.status == 0 {
        let compare = try await run.compareContents("t.qcow2")
        #expect(compare.status == 0, "\(compare)")
      }
    }
  }

  /// `-r all` with a snapshot count above QEMU's limit: the overhanging
  /// snapshots are discarded, the 65536 left are all incomplete, and the
  /// new table overlaps the old one, which the refcount check did not count
  /// (it runs past the end of the file).
  @Test(.requires("qemu-img", "qemu-io"))
  func repairAboveLimitMatches() async throws {
    let fixture = try ImageFixture()
    var results: [ToolResult] = []
    var paths: [String] = []
    for name in ["q", "s"] {
      let directory = fixture.path(name)
      try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
      try await Self.template.value.copy(into: directory)
      let path = "\(directory)/t.qcow2"
      try SnapshotTable(Image(path)).image.write(60, 70_000, width: 4)
      paths.append(path)
    }
    results.append(try await runProcess("qemu-img", ["check", "-r", "all", paths[0]]))
    results.append(await runSpindle(["qemu-img", "check", "-r", "all", paths[1]]))
    #expect(results[0].status == 1)
    #expect(results[1].status == results[0].status)
    #expect(results[1].output == results[0].output)
    #expect(results[1].error == results[0].error)
    #expect(FileManager.default.contentsEqual(atPath: paths[0], andPath: paths[1]))
  }

  /// Repairs on an image with 512-byte clusters (where 5000 bytes of extra
  /// data run a cluster past the end of the file: QEMU leaves the table's
  /// cluster uncounted, frees it as a leak, allocates it for the new table
  /// and its overlap check stops the write).
  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: ["count-larger-than-table", "extra-data-too-large", "extra-data-incomplete"])
  func smallClusterRepairMatches(_ scenario: String) async throws {
    let damage = try #require(Self.scenarios[scenario])
    let run = try await runImageCommand(["check", "-r", "all", "DIR/t.qcow2"]) { directory in
      try await Self.smallClusterTemplate.value.copy(into: directory)
      try damage(try SnapshotTable(Image("\(directory)/t.qcow2")))
    }
    #expect(run.spindle == run.qemu, "\(run)")
    #expect(run.sameBytes("t.qcow2"), "repaired images differ")
  }

  /// A table over QEMU's 64 MiB limit (entries with 64 KiB ids and names,
  /// zeroes in a sparse file): the check fails, `-r all` discards the
  /// overhanging snapshots.
  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: [[], ["-r", "all"]])
  func tooBigTableMatches(_ options: [String]) async throws {
    let run = try await runImageCommand(["check"] + options + ["DIR/t.qcow2"]) { directory in
      try await Self.template.value.copy(into: directory)
      let image = try Image("\(directory)/t.qcow2")
      let start = (try image.handle.seekToEnd() + 0xFFFF) & ~0xFFFF
      let stride: UInt64 = (40 + 16 + 2 * 0xFFFF + 7) & ~7
      let count: UInt64 = 520
      try image.write(60, count, width: 4)
      try image.write(64, start, width: 8)
      for index in 0..<count {
        let entry = start + index * stride
        try image.write(entry + 12, 0xFFFF_FFFF, width: 4)
        try image.write(entry + 36, 16, width: 4)
      }
    }
    #expect(run.spindle == run.qemu, "\(run)")
    if options.contains("-r") {
      #expect(
        FileManager.default.contentsEqual(
          atPath: "\(run.qemuDirectory)/t.qcow2", andPath: "\(run.spindleDirectory)/t.qcow2"),
        "repaired images differ")
    }
  }

  /// A repaired table is clean for both tools, and the snapshots QEMU kept
  /// are listed the same way.
  @Test(.requires("qemu-img", "qemu-io"))
  func repairedTableIsClean() async throws {
    let run = try await runImageCommand(["check", "-r", "all", "DIR/t.qcow2"]) { directory in
      try await Self.template.value.copy(into: directory)
      let table = try SnapshotTable(Image("\(directory)/t.qcow2"))
      try table.image.write(try table.entry(0) + 36, 0, width: 4)
    }
    #expect(run.spindle == run.qemu, "\(run)")
    #expect(run.spindle.status == 0)
    let check = try await run.checkSpindleImage("t.qcow2")
    #expect(check.status == 0, "\(check)")
    let qemuList = try await runProcess(
      "qemu-img", ["snapshot", "-l", "\(run.qemuDirectory)/t.qcow2"])
    let spindleList = try await runProcess(
      "qemu-img", ["snapshot", "-l", "\(run.spindleDirectory)/t.qcow2"])
    #expect(qemuList.status == 0, "\(qemuList)")
    #expect(spindleList == qemuList, "\(spindleList)")
  }

  /// A small image `t.qcow2` with data and two internal snapshots.
  @Sendable static func makeImage(_ directory: String) async throws {
    try await makeImage(directory, [])
  }

  /// ``makeImage(_:)`` with creation `options`.
  static func makeImage(_ directory: String, _ options: [String]) async throws {
    let path = "\(directory)/t.qcow2"
    try await qemuImg(["create", "-q", "-f", "qcow2"] + options + [path, "1M"])
    try await DifferentialCheckTests.qemuIO(path, "write -P 1 0 64k")
    try await qemuImg(["snapshot", "-c", "one", path])
    try await DifferentialCheckTests.qemuIO(path, "write -P 2 64k 64k")
    try await qemuImg(["snapshot", "-c", "two", path])
  }
}

/// The snapshot table of an ``Image``: where it is and where its entries
/// start.
struct SnapshotTable {
  let image: Image
  /// The snapshot count in the header.
  let count: UInt64
  /// The table's offset in the header.
  let offset: UInt64

  init(_ image: Image) throws {
    self.image = image
    count = try image.read(60, width: 4)
    offset = try image.read(64, width: 8)
  }

  /// Where entry `index` starts (each entry is 8-byte aligned).
  func entry(_ index: Int) throws -> UInt64 {
    var position = offset
    for _ in 0..<index {
      let idLength = try image.read(position + 12, width: 2)
      let nameLength = try image.read(position + 14, width: 2)
      let extraLength = try image.read(position + 36, width: 4)
      position = (position + 40 + extraLength + idLength + nameLength + 7) & ~7
    }
    return position
  }
}
