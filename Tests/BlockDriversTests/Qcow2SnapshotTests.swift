import BlockCore
import BlockTestSupport
import Foundation
import Testing

@testable import BlockDrivers

/// The snapshot API of the qcow2 driver: create, list, apply and delete
/// on real files, read back by QEMU; and its errors.
@Suite(.requires("qemu-img", "qemu-io"))
@BlockActor
struct Qcow2SnapshotTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  /// A new 1 MiB qcow2 image with `options`, 64 KiB of 0x11 at 0.
  func image(_ name: String, options: [String] = []) async throws -> String {
    let path = scratch.file(name)
    try await QcowTools.img(["create", "-q", "-f", "qcow2"] + options + [path, "1M"])
    try await QcowTools.io(path, ["write -P 0x11 0 64k"])
    return path
  }

  @Test func createListApplyDeleteRoundTrip() async throws {
    let path = try await image("t.qcow2")
    var node = try await openQcow2(path, readOnly: false)
    var qcow2 = try #require(node.driver as? Qcow2Driver)
    let taken = try await qcow2.createSnapshot(
      node,
      Qcow2SnapshotInfo(
        name: "first", date: (1_700_000_000, 500_000), vmClockNanoseconds: 3_723_456_789_000,
        icount: 42))
    #expect(taken.id == "1")
    try await node.write(at: 0, bytes: [UInt8](repeating: 0x22, count: 4096))
    let listed = try await qcow2.snapshots(node)
    #expect(listed == [taken])
    await node.close()

    let info = try await QcowTools.img(["info", "--output=json", path])
    for member in [
      "\"icount\": 42", "\"date-sec\": 1700000000", "\"date-nsec\": 500000",
      "\"vm-clock-sec\": 3723", "\"name\": \"first\"", "\"id\": \"1\"",
    ] {
      #expect(info.contains(member), "\(member) in \(info)")
    }
    #expect(try await QEMUTools.run(QEMUTools.qemuImg, ["check", path]).status == 0)
    try await QcowTools.io(path, ["read -P 0x22 0 4k"])

    node = try await openQcow2(path, readOnly: false)
    qcow2 = try #require(node.driver as? Qcow2Driver)
    try await qcow2.applySnapshot(node, idOrName: "first")
    #expect(try await node.read(at: 0, count: 4096) == [UInt8](repeating: 0x11, count: 4096))
    let second = try await qcow2.createSnapshot(node, Qcow2SnapshotInfo(name: "second"))
    #expect(second.id == "2")
    try await qcow2.deleteSnapshot(node, id: "1", name: nil)
    #expect(try await qcow2.snapshots(node).map(\.name) == ["second"])
    await node.close()
    #expect(try await QEMUTools.run(QEMUTools.qemuImg, ["check", path]).status == 0)
    try await QcowTools.io(path, ["read -P 0x11 0 64k"])
  }

  /// The VM state saved before a snapshot belongs to it: the active
  /// layer's VM state area is discarded (as QEMU's `qcow2_snapshot_create`
  /// does) and applying the snapshot brings the state back.
  @Test func vmStateGoesWithTheSnapshot() async throws {
    let path = try await image("t.qcow2")
    let node = try await openQcow2(path, readOnly: false)
    let qcow2 = try #require(node.driver as? Qcow2Driver)
    let state = IOVector(allocating: 70_000)
    state.fill(0x5C)
    try await node.vmstate(at: 0, iov: state, isLoad: false)
    try await qcow2.createSnapshot(node, Qcow2SnapshotInfo(name: "vm", vmStateSize: 70_000))
    let active = IOVector(allocating: 70_000)
    try await node.vmstate(at: 0, iov: active, isLoad: true)
    #expect(active.toArray() == [UInt8](repeating: 0, count: 70_000))
    try await qcow2.applySnapshot(node, idOrName: "vm")
    try await node.vmstate(at: 0, iov: active, isLoad: true)
    #expect(active.toArray() == [UInt8](repeating: 0x5C, count: 70_000))
    #expect(try await qcow2.snapshots(node).first?.vmStateSize == 70_000)
    await node.close()
    let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", path])
    #expect(check.status == 0, "\(check.output)")
    let list = try await QEMUTools.run(QEMUTools.qemuImg, ["snapshot", "-l", path])
    #expect(list.output.contains("68.4 KiB"), "\(list.output)")
  }

  @Test func errorsAreQEMUs() async throws {
    let path = try await image("t.qcow2")
    let node = try await openQcow2(path, readOnly: false)
    let qcow2 = try #require(node.driver as? Qcow2Driver)
    try await qcow2.createSnapshot(node, Qcow2SnapshotInfo(id: "7", name: "a"))
    await #expect {
      try await qcow2.createSnapshot(node, Qcow2SnapshotInfo(id: "7", name: "b"))
    } throws: { ($0 as? BlockError)?.code == .fileExists }
    // The next free ID is one more than the largest.
    #expect(try await qcow2.createSnapshot(node, Qcow2SnapshotInfo(name: "c")).id == "8")
    await #expect { try await qcow2.applySnapshot(node, idOrName: "nope") } throws: {
      ($0 as? BlockError)?.code == .noSuchFileOrDirectory
    }
    await #expect { try await qcow2.deleteSnapshot(node, id: "7", name: "c") } throws: {
      ($0 as? BlockError)?.description == "Can't find the snapshot"
    }
    await #expect { try await qcow2.loadSnapshotReadOnly(node, id: "7", name: nil) } throws: {
      ($0 as? BlockError)?.code == .invalidArgument
    }
    await node.close()

    let readOnly = try await openQcow2(path)
    let reader = try #require(readOnly.driver as? Qcow2Driver)
    await #expect {
      try await reader.createSnapshot(readOnly, Qcow2SnapshotInfo(name: "x"))
    } throws: { $0 is BlockError }
    try await reader.loadSnapshotReadOnly(readOnly, id: nil, name: "a")
    await #expect { try await reader.loadSnapshotReadOnly(readOnly, id: "9", name: nil) } throws: {
      ($0 as? BlockError)?.description == "Can't find snapshot"
    }
    await readOnly.close()
    #expect(try await QEMUTools.run(QEMUTools.qemuImg, ["check", path]).status == 0)
  }

  /// One-bit refcounts cannot count a second reference: the creation fails
  /// as QEMU's (EINVAL) leaking only the copied L1 table.
  @Test func oneBitRefcountsRefuseSnapshots() async throws {
    let path = try await image("t.qcow2", options: ["-o", "refcount_bits=1"])
    let node = try await openQcow2(path, readOnly: false)
    let qcow2 = try #require(node.driver as? Qcow2Driver)
    await #expect { try await qcow2.createSnapshot(node, Qcow2SnapshotInfo(name: "x")) } throws: {
      ($0 as? BlockError)?.code == .invalidArgument
    }
    await node.close()
    let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", path])
    #expect(check.status == 3 && check.output.contains("1 leaked clusters"), "\(check.output)")
    let qemu = try await QEMUTools.run(QEMUTools.qemuImg, ["snapshot", "-c", "x", path])
    #expect(qemu.output.contains("-22 (Invalid argument)"), "\(qemu.output)")
  }

  @Test func externalDataFilesRefuseSnapshots() async throws {
    let path = scratch.file("d.qcow2")
    try await QcowTools.img([
      "create", "-q", "-f", "qcow2", "-o", "data_file=\(scratch.file("d.raw"))", path, "1M",
    ])
    let node = try await openQcow2(path, readOnly: false)
    let qcow2 = try #require(node.driver as? Qcow2Driver)
    await #expect { try await qcow2.createSnapshot(node, Qcow2SnapshotInfo(name: "x")) } throws: {
      ($0 as? BlockError)?.code == .notSupported
    }
    await node.close()
  }

  /// At 65536 snapshots a new one fails with EFBIG, as in QEMU, before
  /// anything is written.
  @Test func the65537thSnapshotIsRefused() async throws {
    let path = try await image("t.qcow2")
    try await QcowTools.img(["snapshot", "-c", "s", path])
    var bytes = try contents(of: path)
    let entryOffset = Int(bytes.uint64(at: 64))
    let extra = Int(bytes.uint32(at: entryOffset + 36))
    // Entries with the first one's L1 table, IDs 1..65536, empty names.
    var table: [UInt8] = []
    for id in 1...Int(Qcow2Header.maxSnapshots) {
      table += [UInt8](repeating: 0, count: (8 - table.count % 8) % 8)
      var entry = Array(bytes[entryOffset..<entryOffset + 40 + extra])
      let idBytes = Array(String(id).utf8)
      entry[12] = 0
      entry[13] = UInt8(idBytes.count)
      entry[14] = 0
      entry[15] = 0
      table += entry + idBytes
    }
    let tableOffset = (bytes.count + 65535) & ~65535
    bytes += [UInt8](repeating: 0, count: tableOffset - bytes.count) + table
    bytes.setUInt32(Qcow2Header.maxSnapshots, at: 60)
    bytes.setUInt64(UInt64(tableOffset), at: 64)
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    let before = try contents(of: path)

    let node = try await openQcow2(path, readOnly: false)
    let qcow2 = try #require(node.driver as? Qcow2Driver)
    await #expect { try await qcow2.createSnapshot(node, Qcow2SnapshotInfo(name: "x")) } throws: {
      ($0 as? BlockError)?.code == .fileTooLarge
    }
    await node.close()
    #expect(try contents(of: path) == before)
    let qemu = try await QEMUTools.run(QEMUTools.qemuImg, ["snapshot", "-c", "x", path])
    #expect(qemu.output.contains("-27 (File too large)"), "\(qemu.output)")
  }
}
