import BlockTestSupport
import Foundation
import Testing

/// qcow2 headers QEMU 7.2 reads in its own way, patched into images
/// `qemu-img create` made, through `qemu-img info`/`check` and `qemu-io`
/// against Spindle: an extension header cut by `backing_file_offset`, a
/// feature-name table whose last entry is short, two backing-format
/// extensions (the last counts), a backing-format extension too long, a
/// virtual size whose L1 index overflows QEMU's int, a snapshot table past
/// the end of the file (reads as zeroes), and free refcounts on the header
/// cluster, which an L2 table allocation must refuse with QEMU's message.
@Suite(.requires("qemu-img", "qemu-io"))
struct Qcow2HeaderParityDifferentialTests {
  /// Patches `bytes` at `offset` of the file at `path`.
  static func patch(_ path: String, at offset: Int, _ bytes: [UInt8]) throws {
    var data = try Data(contentsOf: URL(fileURLWithPath: path))
    data.replaceSubrange(offset..<offset + bytes.count, with: bytes)
    try data.write(to: URL(fileURLWithPath: path))
  }

  static func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.bigEndian) { Array($0) }
  }

  /// The offset of the first header extension of `type` in a v3 image.
  static func extensionOffset(_ path: String, type: UInt32) throws -> Int? {
    let data = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    func uint32(_ at: Int) -> UInt32 { data[at..<at + 4].reduce(0) { $0 << 8 | UInt32($1) } }
    var offset = Int(uint32(100))
    while uint32(offset) != 0 {
      if uint32(offset) == type { return offset }
      offset += 8 + (Int(uint32(offset + 4)) + 7) & ~7
    }
    return nil
  }

  static func setup(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    func create(_ name: String, _ options: [String] = []) async throws {
      try await qemuImg(["create", "-q", "-f", "qcow2"] + options + [path(name), "1M"])
    }
    try await qemuImg(["create", "-q", "-f", "raw", path("base.raw"), "1M"])
    // The extension area ends 4 bytes into the first extension's header.
    try await create("cut.qcow2")
    try patch(path("cut.qcow2"), at: 8, bigEndian(UInt64(116)))
    // The feature table's last entry cut to 40 bytes and renamed to an
    // unknown incompatible feature that the image sets.
    try await create("features.qcow2")
    let table = try #require(try extensionOffset(path("features.qcow2"), type: 0x6803_F857))
    let tableData = try Data(contentsOf: URL(fileURLWithPath: path("features.qcow2")))
    let tableLength = tableData[table + 4..<table + 8].reduce(0) { $0 << 8 | Int($1) }
    try patch(path("features.qcow2"), at: table + 4, bigEndian(UInt32(tableLength - 8)))
    let last = table + 8 + tableLength - 48
    try patch(path("features.qcow2"), at: last, [0, 7] + Array("fancy".utf8) + [0])
    try patch(path("features.qcow2"), at: 72, bigEndian(UInt64(1 << 7)))
    // A first backing-format extension saying qcow2, QEMU's saying raw after
    // it (the backing file offset moves along).
    for (name, length) in [("formats.qcow2", UInt32(5)), ("longformat.qcow2", UInt32(20))] {
      try await create(name, ["-b", "base.raw", "-F", "raw"])
      var data = try Data(contentsOf: URL(fileURLWithPath: path(name)))
      let extensions = data[100..<104].reduce(0) { $0 << 8 | Int($1) }
      let backingOffset = data[8..<16].reduce(0) { $0 << 8 | Int($1) }
      let inserted =
        bigEndian(UInt32(0xE279_2ACA)) + bigEndian(length) + Array("qcow2".utf8)
        + [0, 0, 0]
      data.insert(contentsOf: inserted, at: extensions)
      data.removeSubrange(65536..<65536 + inserted.count)
      data.replaceSubrange(8..<16, with: bigEndian(UInt64(backingOffset + inserted.count)))
      try data.write(to: URL(fileURLWithPath: path(name)))
    }
    // 2 EiB: the L1 index of the end exceeds INT_MAX.
    try await create("huge.qcow2")
    try patch(path("huge.qcow2"), at: 24, bigEndian(UInt64(1) << 61))
    // One snapshot whose table starts at 1 MiB, past the end of the file.
    try await create("snapshots.qcow2")
    try patch(path("snapshots.qcow2"), at: 60, bigEndian(UInt32(1)) + bigEndian(UInt64(1 << 20)))
    // Cluster 0's refcount (in the refcount block at 128 KiB) is 0.
    try await create("header-free.qcow2")
    try patch(path("header-free.qcow2"), at: 0x20000, [0, 0])
    // Extended L2 entries: the first cluster's bitmap says every subcluster
    // is both allocated and zero (the L2 table is at 256 KiB).
    try await create("invalid-entry.qcow2", ["-o", "extended_l2=on"])
    let written = try await runProcess(
      "qemu-io", ["-c", "write -P 1 0 64k", path("invalid-entry.qcow2")])
    #expect(written.status == 0, "\(written)")
    try patch(path("invalid-entry.qcow2"), at: 0x40008, [UInt8](repeating: 0xFF, count: 8))
  }

  static let runs: [[String]] = [
    ["info", "DIR/cut.qcow2"], ["info", "DIR/features.qcow2"], ["info", "DIR/formats.qcow2"],
    ["info", "DIR/longformat.qcow2"], ["info", "DIR/huge.qcow2"], ["info", "DIR/snapshots.qcow2"],
    ["check", "DIR/snapshots.qcow2"],
  ]

  @Test(arguments: runs)
  func imageCommandMatches(_ arguments: [String]) async throws {
    let run = try await runImageCommand(arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
  }

  static let ioRuns: [(image: String, commands: [String])] = [
    ("snapshots.qcow2", ["write -P 1 0 4k", "read -P 1 0 4k"]),
    ("header-free.qcow2", ["write -P 1 0 4k", "read -P 0 0 4k"]),
    ("invalid-entry.qcow2", ["read 0 4k"]), ("invalid-entry.qcow2", ["write 4k 4k"]),
  ]

  @Test(arguments: ioRuns)
  func ioMatches(_ image: String, commands: [String]) async throws {
    let fixture = try ImageFixture()
    let qemuDirectory = fixture.path("q")
    let spindleDirectory = fixture.path("s")
    for directory in [qemuDirectory, spindleDirectory] {
      try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
      try await Self.setup(directory)
    }
    let arguments = commands.flatMap { ["-c", $0] }
    let qemu = try await runProcess("qemu-io", arguments + ["\(qemuDirectory)/\(image)"])
      .masked(replacing: "\(qemuDirectory)/\(image)")
    let spindle = await runSpindle(["qemu-io"] + arguments + ["\(spindleDirectory)/\(image)"])
      .masked(replacing: "\(spindleDirectory)/\(image)")
    #expect(spindle == qemu)
    let qemuBytes = FileManager.default.contents(atPath: "\(qemuDirectory)/\(image)")
    let spindleBytes = FileManager.default.contents(atPath: "\(spindleDirectory)/\(image)")
    #expect(qemuBytes == spindleBytes, "\(image) differs")
  }
}
