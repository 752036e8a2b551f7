import BlockCore
import BlockTestSupport
import Foundation
import Testing

@testable import BlockDrivers

/// Persistent bitmaps QEMU wrote, loaded by Spindle: the dirty extents
/// equal what QEMU's NBD server exports for the bitmap
/// (`qemu:dirty-bitmap:NAME` through `nbdinfo --map`).
@Suite(.requires("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo"))
@BlockActor
struct Qcow2BitmapLoadTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  /// An image layout, the bitmap's granularity and the qemu-io commands
  /// run while the bitmap records.
  struct Case: Sendable, CustomStringConvertible {
    var createOptions: [String]
    var size: String
    var granularity: String
    var commands: [String]
    var description: String { "\(createOptions) \(size), granularity \(granularity)" }
  }

  nonisolated static let cases: [Case] = [
    Case(
      createOptions: [], size: "4M", granularity: "16k",
      commands: ["write 5000 70000", "write 2M 1", "write -z 3M 100k"]),
    // 512-byte clusters: a bitmap cluster covers 2 MiB at 512-byte
    // granularity, so the table has several entries.
    Case(
      createOptions: ["-o", "cluster_size=512"], size: "5M", granularity: "512",
      commands: ["write 0 1", "write 1M 3M", "discard 2M 4k", "write 4999k 1k"]),
    Case(
      createOptions: [], size: "100M", granularity: "64k",
      commands: ["write 0 64k", "write 99M 1M"]),
  ]

  @Test(arguments: cases)
  func extentsMatchQEMUs(_ testCase: Case) async throws {
    let path = scratch.file("b.qcow2")
    try await QcowTools.img(
      ["create", "-q", "-f", "qcow2"] + testCase.createOptions + [path, testCase.size])
    try await QcowTools.img(["bitmap", "--add", "-g", testCase.granularity, path, "b0"])
    try await QcowTools.img(["bitmap", "--add", "--disable", path, "idle"])
    try await QcowTools.io(path, testCase.commands)

    let node = try await openQcow2(path)
    let qcow2 = try #require(node.driver as? Qcow2Driver)
    let bitmap = try await qcow2.loadPersistentBitmap(node, named: "b0")
    let idle = try await qcow2.loadPersistentBitmap(node, named: "idle")
    await node.close()
    #expect(bitmap.isEnabled && !idle.isEnabled)
    #expect(idle.dirtyRanges.isEmpty)
    #expect(bitmap.dirtyRanges == (try await Self.qemuDirtyExtents(path, bitmap: "b0")))
    #expect(!bitmap.dirtyRanges.isEmpty)
    try await expectSameDataClusters(path, bitmap)
  }

  /// Serialising the loaded bitmap gives the data clusters QEMU stored, and
  /// no cluster where QEMU's table entry is zero.
  func expectSameDataClusters(_ path: String, _ bitmap: DirtyBitmap) async throws {
    let node = try await openQcow2(path)
    let qcow2 = try #require(node.driver as? Qcow2Driver)
    let info = try #require(try await qcow2.persistentBitmaps(node).first { $0.name == "b0" })
    await node.close()
    let bytes = try contents(of: path)
    let header = try Qcow2Header.parse(bytes, fileLength: Int64(bytes.count))
    var stored = 0
    for index in 0..<Int(info.tableEntries) {
      let entry = bytes.uint64(at: Int(info.tableOffset) + index * 8)
      let serialised = bitmap.dataCluster(
        index, clusterSize: header.clusterSize, diskSize: Int64(header.size))
      if entry == 0 {
        #expect(serialised == nil, "cluster \(index)")
      } else {
        let offset = Int(entry & 0x00FF_FFFF_FFFF_FE00)
        stored += 1
        #expect(
          serialised == Array(bytes[offset..<offset + Int(header.clusterSize)]), "cluster \(index)")
      }
    }
    #expect(stored > 0, "QEMU stored data clusters")
  }

  @Test func inUseBitmapsAreRefused() async throws {
    let path = scratch.file("b.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", path, "1M"])
    try await QcowTools.img(["bitmap", "--add", path, "b0"])
    // The directory follows the bitmaps extension's offset; set in-use.
    var bytes = try contents(of: path)
    var position = Int(bytes.uint32(at: 100))
    while bytes.uint32(at: position) != 0x2385_2875 {
      position += 8 + ((Int(bytes.uint32(at: position + 4)) + 7) & ~7)
    }
    let directory = Int(bytes.uint64(at: position + 8 + 16))
    bytes[directory + 15] |= 1
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    let node = try await openQcow2(path)
    let qcow2 = try #require(node.driver as? Qcow2Driver)
    await #expect { try await qcow2.loadPersistentBitmap(node, named: "b0") } throws: {
      ($0 as? BlockError)?.code == .invalidArgument
    }
    await #expect { try await qcow2.loadPersistentBitmap(node, named: "nope") } throws: {
      ($0 as? BlockError)?.code == .noSuchFileOrDirectory
    }
    await node.close()
  }

  /// The dirty extents of `bitmap` as qemu-nbd exports them.
  static func qemuDirtyExtents(_ path: String, bitmap: String) async throws -> [Range<Int64>] {
    let nbdinfo = ToolLocator.path(of: "nbdinfo") ?? "nbdinfo"
    let qemuNbd = ToolLocator.path(of: "qemu-nbd") ?? "qemu-nbd"
    let (status, output) = try await QEMUTools.run(
      nbdinfo,
      [
        "--map=qemu:dirty-bitmap:\(bitmap)", "--", "[", qemuNbd, "-r", "-f", "qcow2", "-B",
        bitmap, path, "]",
      ])
    #expect(status == 0, "\(output)")
    var extents: [Range<Int64>] = []
    for line in output.split(separator: "\n") {
      let fields = line.split(separator: " ", omittingEmptySubsequences: true)
      guard fields.count >= 3, let offset = Int64(fields[0]), let length = Int64(fields[1]),
        fields[2] == "1"
      else { continue }
      if let last = extents.last, last.upperBound == offset {
        extents[extents.count - 1] = last.lowerBound..<offset + length
      } else {
        extents.append(offset..<offset + length)
      }
    }
    return extents
  }
}
