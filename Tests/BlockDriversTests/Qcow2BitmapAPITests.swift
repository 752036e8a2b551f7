import BlockCore
import BlockTestSupport
import Foundation
import Testing

@testable import BlockDrivers

/// The persistent-bitmap library API on a node opened writable
/// (``Qcow2Driver/bitmapEditor(_:)``): bitmaps added, cleared, merged,
/// disabled and removed through it track the node's writes, their dirty
/// extents are what an incremental backup copies, and after the node
/// closes QEMU reads exactly those extents and flags
/// (`nbdinfo --map` over `qemu-nbd -B`, `qemu-img info`), the image clean
/// for `qemu-img check`.
@Suite(.requires("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo"))
@BlockActor
struct Qcow2BitmapAPITests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  /// The chunks of `granularity` that `writes` touch, merged.
  static func chunks(_ writes: [Range<Int64>], granularity: Int64) -> [Range<Int64>] {
    var result: [Range<Int64>] = []
    for write in writes.sorted(by: { $0.lowerBound < $1.lowerBound }) {
      let start = write.lowerBound / granularity * granularity
      let end = (write.upperBound + granularity - 1) / granularity * granularity
      if let last = result.last, last.upperBound >= start {
        result[result.count - 1] = last.lowerBound..<max(last.upperBound, end)
      } else {
        result.append(start..<end)
      }
    }
    return result
  }

  @Test func bitmapsEditedThroughTheLibraryReadBackInQEMU() async throws {
    let path = scratch.file("api.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", path, "8M"])
    try await QcowTools.img(["bitmap", "--add", path, "existing"])
    let node = try await openQcow2(path, readOnly: false)
    let qcow2 = try #require(node.driver as? Qcow2Driver)
    let bitmaps = try await qcow2.bitmapEditor(node)
    try bitmaps.add("backup-0", granularity: nil, disabled: false)
    try bitmaps.add("fine", granularity: 4096, disabled: false)
    try bitmaps.add("paused", granularity: 65536, disabled: true)
    try bitmaps.add("gone", granularity: nil, disabled: false)
    #expect(bitmaps.names == ["existing", "backup-0", "fine", "paused", "gone"])
    #expect(throws: BlockError.self) { try bitmaps.add("fine", granularity: nil, disabled: false) }

    let first: [Range<Int64>] = [5000..<75000, (2 << 20)..<(2 << 20) + 1]
    for range in first {
      try await node.write(
        at: range.lowerBound, bytes: [UInt8](repeating: 1, count: Int(range.count)))
    }
    #expect(try bitmaps.bitmap("backup-0").dirtyRanges == Self.chunks(first, granularity: 65536))
    #expect(try bitmaps.bitmap("fine").dirtyRanges == Self.chunks(first, granularity: 4096))
    #expect(try bitmaps.bitmap("paused").dirtyRanges.isEmpty)
    // An incremental backup of 64 KiB ... 3 MiB reads these extents.
    #expect(
      try bitmaps.bitmap("backup-0").dirtyRanges(in: 65536..<(3 << 20))
        == [65536..<131072, (2 << 20)..<(2 << 20) + 65536])

    try bitmaps.clear("fine")
    try bitmaps.setEnabled("paused", true)
    let second: [Range<Int64>] = [(6 << 20)..<(6 << 20) + 512]
    try await node.writeZeroes(at: second[0].lowerBound, count: Int64(second[0].count))
    try bitmaps.setEnabled("backup-0", false)
    try await node.write(at: 7 << 20, bytes: [UInt8](repeating: 2, count: 4096))
    try bitmaps.merge(into: "paused", from: try bitmaps.bitmap("fine"), diskSize: 8 << 20)
    try await bitmaps.remove("gone")
    #expect(throws: BlockError.self) { try bitmaps.bitmap("gone") }

    var expected: [String: [Range<Int64>]] = [:]
    for name in bitmaps.names { expected[name] = try bitmaps.bitmap(name).dirtyRanges }
    #expect(
      expected["fine"] == Self.chunks(second + [(7 << 20)..<(7 << 20) + 4096], granularity: 4096))
    await node.close()

    for (name, ranges) in expected {
      #expect(
        try await Qcow2BitmapLoadTests.qemuDirtyExtents(path, bitmap: name) == ranges, "\(name)")
    }
    let info = try await QcowTools.img(["info", path])
    #expect(!info.contains("gone") && !info.contains("in-use"), "\(info)")
    let check = try await QcowTools.img(["check", path])
    #expect(check.contains("No errors were found"), "\(check)")
  }

  /// A read-only reopen stores the bitmaps and makes them read-only: the
  /// editor is refused, and a read-write reopen gives back the same editor
  /// with bitmaps its writes mark again.
  @Test func reopenedReadOnlyBitmapsCannotBeEdited() async throws {
    let path = scratch.file("reopen.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", path, "1M"])
    try await QcowTools.img(["bitmap", "--add", path, "b0"])
    let node = try await openQcow2(path, readOnly: false)
    let qcow2 = try #require(node.driver as? Qcow2Driver)
    let editor = try await qcow2.bitmapEditor(node)
    try await node.write(at: 0, bytes: [UInt8](repeating: 1, count: 512))
    try await node.reopen(["read-only": "on"])
    #expect(try editor.bitmap("b0").isReadOnly)
    let stored = try await QcowTools.img(["info", "-U", path])
    #expect(!stored.contains("in-use"), "\(stored)")
    await #expect { try await qcow2.bitmapEditor(node) } throws: {
      ($0 as? BlockError)?.code == .permissionDenied
    }
    try await node.reopen(["read-only": "off"])
    #expect(try await qcow2.bitmapEditor(node) === editor)
    #expect(try !editor.bitmap("b0").isReadOnly)
    let marked = try await QcowTools.img(["info", "-U", path])
    #expect(marked.contains("in-use"), "\(marked)")
    try await node.write(at: 131072, bytes: [UInt8](repeating: 2, count: 512))
    #expect(try editor.bitmap("b0").dirtyRanges == [0..<65536, 131072..<196608])
    await node.close()
  }

  @Test func editingNeedsAWritableVersion3Image() async throws {
    let path = scratch.file("ro.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", path, "1M"])
    let readOnly = try await openQcow2(path)
    let qcow2 = try #require(readOnly.driver as? Qcow2Driver)
    await #expect { try await qcow2.bitmapEditor(readOnly) } throws: {
      ($0 as? BlockError)?.code == .permissionDenied
    }
    await readOnly.close()
    let v2 = scratch.file("v2.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2, "1M"])
    let node = try await openQcow2(v2, readOnly: false)
    let v2Driver = try #require(node.driver as? Qcow2Driver)
    await #expect { try await v2Driver.bitmapEditor(node) } throws: {
      ($0 as? BlockError)?.code == .invalidArgument
    }
    await node.close()
  }
}
