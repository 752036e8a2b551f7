import BlockTestSupport
import Foundation
import Testing

@testable import SpindleCLI

/// `qemu-img info` against Spindle's on images with internal snapshots and
/// persistent bitmaps: the snapshot table, the `snapshots` JSON array and
/// the `bitmaps` format-specific list, alone and along a backing chain.
///
/// Both programs format snapshot dates in the local time zone of the test
/// process (qemu-img inherits its environment), so the outputs agree
/// whatever the zone is.
@Suite struct DifferentialInfoSnapshotTests {
  /// Snapshot dates differ between the two set-up runs, so they are set to
  /// fixed values; the first snapshot also gets a VM clock, VM state and
  /// instruction count QEMU's tools never write themselves.
  static func fixSnapshots(_ path: String) throws {
    var bytes = Data(try Data(contentsOf: URL(fileURLWithPath: path)))
    func read(_ offset: Int, _ width: Int) -> UInt64 {
      bytes[offset..<offset + width].reduce(0) { $0 << 8 | UInt64($1) }
    }
    func write(_ value: UInt64, _ offset: Int, _ width: Int) {
      for index in 0..<width {
        bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(width - 1 - index)))
      }
    }
    var offset = Int(read(64, 8))
    for index in 0..<Int(read(60, 4)) {
      write(1_700_000_000 + UInt64(index) * 3_456_789, offset + 16, 4)
      write(123_456_789 * UInt64(index), offset + 20, 4)
      let extra = Int(read(offset + 36, 4))
      if index == 0 {
        write(3_723_456_789_000, offset + 24, 8)
        if extra >= 8 { write(1536 << 10, offset + 40, 8) }
        if extra >= 24 { write(123_456_789, offset + 56, 8) }
      }
      let variable = extra + Int(read(offset + 12, 2)) + Int(read(offset + 14, 2))
      offset += (40 + variable + 7) & ~7
    }
    try bytes.write(to: URL(fileURLWithPath: path))
  }

  /// Shortens the extra data of the image's only snapshot to 16 bytes, as
  /// entries written before QEMU recorded instruction counts are.
  static func dropICount(_ path: String) throws {
    var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
    let entry = bytes[64..<72].reduce(0) { $0 << 8 | Int($1) }
    #expect(bytes[entry + 39] == 24)
    bytes[entry + 39] = 16
    let names = Int(bytes[entry + 13]) + Int(bytes[entry + 15])
    bytes[entry + 56..<entry + 56 + names] = bytes[entry + 64..<entry + 64 + names]
    try bytes.write(to: URL(fileURLWithPath: path))
  }

  /// Changes the bytes of an image with a bitmaps extension: `change` gets
  /// the bytes, the offset of the extension's data and of the directory.
  static func patchBitmaps(_ path: String, _ change: (inout Data, Int, Int) -> Void) throws {
    var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
    func read(_ offset: Int, _ width: Int) -> Int {
      bytes[offset..<offset + width].reduce(0) { $0 << 8 | Int($1) }
    }
    var offset = read(100, 4)
    while read(offset, 4) != 0 {
      if read(offset, 4) == 0x2385_2875 {
        change(&bytes, offset + 8, read(offset + 24, 8))
        break
      }
      offset += 8 + (read(offset + 4, 4) + 7) & ~7
    }
    try bytes.write(to: URL(fileURLWithPath: path))
  }

  /// Copies of bitmaps.qcow2 each changed by one patch: in use, invalidated
  /// by a program lacking bitmap support, and broken in ways QEMU refuses.
  static let bitmapPatches: [(String, @Sendable (inout Data, Int, Int) -> Void)] = [
    ("inuse", { bytes, _, directory in bytes[directory + 15] = 3 }),
    ("stale", { bytes, _, _ in bytes[95] &= ~1 }),
    ("far", { bytes, ext, _ in bytes[ext + 10] = 1 }),
    ("unaligned", { bytes, ext, _ in bytes[ext + 23] |= 8 }),
    ("granularity", { bytes, _, directory in bytes[directory + 17] = 40 }),
    ("long-name", { bytes, _, directory in bytes[directory + 18] = 7 }),
    ("zero-count", { bytes, ext, _ in bytes[ext + 3] = 0 }),
    ("one-more", { bytes, ext, _ in bytes[ext + 3] += 1 }),
    ("one-less", { bytes, ext, _ in bytes[ext + 3] -= 1 }),
    ("reserved", { bytes, ext, _ in bytes[ext + 4] = 1 }),
    ("extra-data", { bytes, _, directory in bytes[directory + 23] = 8 }),
    ("flags", { bytes, _, directory in bytes[directory + 12] = 1 }),
    ("small-table", { bytes, _, directory in bytes[directory + 17] = 9 }),
    ("empty-directory", { bytes, ext, _ in bytes[ext + 8..<ext + 16] = Data(count: 8) }),
    ("huge-directory", { bytes, ext, _ in bytes[ext + 10] = 0x10 }),
  ]

  /// Images with snapshots, bitmaps, both, and a chain of them.
  static func setup(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    func io(_ command: String, _ name: String) async throws {
      let result = try await runProcess("qemu-io", ["-c", command, path(name)])
      #expect(result.status == 0, "\(result)")
    }
    let longName = "a-snapshot-name-much-longer-than-the-sixteen-columns-of-the-tag"
    try await qemuImg(["create", "-q", "-f", "qcow2", path("snaps.qcow2"), "64M"])
    try await io("write -P 1 0 1M", "snaps.qcow2")
    try await qemuImg(["snapshot", "-c", "snap1", path("snaps.qcow2")])
    try await io("write -P 2 512k 1M", "snaps.qcow2")
    try await qemuImg(["snapshot", "-c", longName, path("snaps.qcow2")])
    try await qemuImg(["snapshot", "-c", "s3", path("snaps.qcow2")])
    try fixSnapshots(path("snaps.qcow2"))

    try await qemuImg(["create", "-q", "-f", "qcow2", path("bitmaps.qcow2"), "16M"])
    try await qemuImg(["bitmap", "--add", path("bitmaps.qcow2"), "bm0"])
    try await qemuImg([
      "bitmap", "--add", "-g", "1M", "--disable", path("bitmaps.qcow2"), "bitmap-two",
    ])
    for (name, change) in bitmapPatches {
      try FileManager.default.copyItem(
        atPath: path("bitmaps.qcow2"), toPath: path("\(name).qcow2"))
      try patchBitmaps(path("\(name).qcow2"), change)
    }

    try await qemuImg(["create", "-q", "-f", "qcow2", path("base.qcow2"), "16M"])
    try await qemuImg(["snapshot", "-c", "base-snap", path("base.qcow2")])
    try fixSnapshots(path("base.qcow2"))
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", path("both.qcow2"),
    ])
    try await qemuImg(["snapshot", "-c", "top-snap", path("both.qcow2")])
    try await qemuImg(["bitmap", "--add", path("both.qcow2"), "top-bitmap"])
    try fixSnapshots(path("both.qcow2"))

    try await qemuImg(["create", "-q", "-f", "qcow2", "-o", "compat=0.10", path("v2.qcow2"), "1M"])
    try await qemuImg(["snapshot", "-c", "old", path("v2.qcow2")])
    try fixSnapshots(path("v2.qcow2"))
    try FileManager.default.copyItem(atPath: path("v2.qcow2"), toPath: path("no-icount.qcow2"))
    try dropICount(path("no-icount.qcow2"))
  }

  static let runs: [[String]] = [
    ["DIR/snaps.qcow2"], ["--output=json", "DIR/snaps.qcow2"],
    ["DIR/bitmaps.qcow2"], ["--output=json", "DIR/bitmaps.qcow2"],
    ["DIR/inuse.qcow2"], ["--output=json", "DIR/inuse.qcow2"],
    ["DIR/stale.qcow2"], ["--output=json", "DIR/stale.qcow2"],
    ["DIR/far.qcow2"], ["DIR/unaligned.qcow2"], ["DIR/granularity.qcow2"],
    ["DIR/long-name.qcow2"], ["DIR/zero-count.qcow2"], ["DIR/one-more.qcow2"],
    ["DIR/one-less.qcow2"], ["DIR/reserved.qcow2"], ["DIR/extra-data.qcow2"],
    ["DIR/flags.qcow2"], ["DIR/small-table.qcow2"], ["DIR/empty-directory.qcow2"],
    ["DIR/huge-directory.qcow2"],
    ["DIR/both.qcow2"], ["--backing-chain", "DIR/both.qcow2"],
    ["--output=json", "--backing-chain", "DIR/both.qcow2"],
    ["DIR/v2.qcow2"], ["--output=json", "DIR/v2.qcow2"],
    ["DIR/no-icount.qcow2"], ["--output=json", "DIR/no-icount.qcow2"],
    ["-U", "-f", "qcow2", "DIR/snaps.qcow2"],
  ]

  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: runs)
  func infoMatches(_ arguments: [String]) async throws {
    let run = try await runImageCommand(["info"] + arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
  }

  @Test func emptyListsBreakTheLineAsQEMUDoes() {
    let object = QObject.dict([("flags", .list([]))])
    #expect(object.prettyJSON() == "{\n    \"flags\": [\n    ]\n}")
  }

  @Test func nestedMembersAreIndentedAsQEMUDumpsThem() {
    let data = QObject.dict([
      ("lazy-refcounts", .bool(false)),
      ("bitmaps", .list([.dict([("flags", .list([.string("auto")])), ("name", .string("b"))])])),
    ])
    #expect(
      data.humanDump(indentation: 1) == """
            lazy refcounts: false
            bitmaps:
                [0]:
                    flags:
                        [0]: auto
                    name: b

        """)
  }
}
