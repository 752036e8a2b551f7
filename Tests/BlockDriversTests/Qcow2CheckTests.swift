import BlockCore
import BlockTestSupport
import Foundation
import Testing

@testable import BlockDrivers

/// The qcow2 consistency check through the library API (its counts against
/// `qemu-img check --output=json`), and QEMU's handling of dirty images:
/// repaired on a writable open, left alone on a read-only one.
@Suite(.requires("qemu-img", "qemu-io"))
@BlockActor
struct Qcow2CheckTests {
  let scratch: ScratchDirectory
  init() throws { scratch = try ScratchDirectory() }

  /// A 16 MiB image with data, a gap and a compressed cluster.
  func makeImage(_ name: String, options: [String] = []) async throws -> String {
    let path = scratch.file(name)
    try await QcowTools.img(["create", "-q", "-f", "qcow2"] + options + [path, "16M"])
    try await QcowTools.io(
      path, ["write -P 7 0 384k", "write -P 8 512k 64k", "write -c -P 9 640k 64k"])
    return path
  }

  /// qemu-img check's JSON numbers for `path`.
  func qemuCounts(_ path: String) async throws -> [String: Int64] {
    let (_, output) = try await QEMUTools.run(
      QEMUTools.qemuImg, ["check", "--output=json", path])
    let start = try #require(output.firstIndex(of: "{"))
    let end = try #require(output.lastIndex(of: "}"))
    let object = try JSONSerialization.jsonObject(with: Data(output[start...end].utf8))
    let dictionary = try #require(object as? [String: Any])
    return dictionary.compactMapValues { ($0 as? NSNumber)?.int64Value }
  }

  /// The refcount block's offset (first block) of the image at `path`.
  func refcountBlock(_ path: String) throws -> Int {
    let bytes = try contents(of: path)
    let table = Int(bytes.uint64(at: 48))
    return Int(bytes.uint64(at: table))
  }

  @Test(arguments: [[], ["-o", "refcount_bits=1"], ["-o", "refcount_bits=64,cluster_size=4k"]])
  func countsMatchQemuImg(_ options: [String]) async throws {
    let path = try await makeImage("image.qcow2", options: options)
    let expected = try await qemuCounts(path)
    let node = try await openQcow2(path)
    let driver = try #require(node.driver as? Qcow2Driver)
    let result = try await driver.check(node)
    await node.close()
    #expect(result.failure == nil)
    #expect(result.messages.isEmpty)
    #expect(result.corruptions == 0 && result.leaks == 0 && result.checkErrors == 0)
    #expect(result.imageEndOffset == expected["image-end-offset"])
    #expect(result.totalClusters == expected["total-clusters"])
    #expect(result.allocatedClusters == expected["allocated-clusters"])
    #expect(result.fragmentedClusters == expected["fragmented-clusters"])
    #expect(result.compressedClusters == expected["compressed-clusters"])
  }

  @Test func leakIsReportedAndRepaired() async throws {
    let path = try await makeImage("leak.qcow2")
    // Cluster 3 (the first data cluster) gets a second, unused reference.
    try patchFile(path, at: try refcountBlock(path) + 2 * 3, bigEndianBytes(2, width: 2))
    let node = try await openQcow2(path, readOnly: false)
    let driver = try #require(node.driver as? Qcow2Driver)
    let found = try await driver.check(node)
    #expect(found.leaks == 1 && found.corruptions == 0)
    #expect(found.messages.first == "Leaked cluster 3 refcount=2 reference=1")
    let repaired = try await driver.check(node, mode: .fixLeaks)
    #expect(repaired.leaksFixed == 1 && repaired.leaks == 0)
    #expect(repaired.messages.contains("Repairing cluster 3 refcount=2 reference=1"))
    let after = try await driver.check(node)
    #expect(after.leaks == 0 && after.corruptions == 0 && after.messages.isEmpty)
    await node.close()
    let (status, output) = try await QEMUTools.run(QEMUTools.qemuImg, ["check", path])
    #expect(status == 0, "\(output)")
  }

  @Test func repairNeedsAWritableNode() async throws {
    let path = try await makeImage("readonly.qcow2")
    let node = try await openQcow2(path)
    let driver = try #require(node.driver as? Qcow2Driver)
    await #expect(throws: BlockError.self) { try await driver.check(node, mode: .fixLeaks) }
    await node.close()
  }

  /// A dirty image (lazy refcounts) whose data cluster lost its refcount.
  func makeDirtyImage(_ name: String) async throws -> String {
    let path = try await makeImage(name, options: ["-o", "lazy_refcounts=on"])
    try patchFile(path, at: 72, bigEndianBytes(1, width: 8))
    try patchFile(path, at: try refcountBlock(path) + 2 * 4, bigEndianBytes(0, width: 2))
    return path
  }

  @Test func dirtyImageOpensReadOnlyUnchanged() async throws {
    let path = try await makeDirtyImage("dirty-ro.qcow2")
    let before = try contents(of: path)
    let node = try await openQcow2(path)
    #expect(try await node.read(at: 0, count: 512) == [UInt8](repeating: 7, count: 512))
    await node.close()
    #expect(try contents(of: path) == before)
  }

  @Test func dirtyImageIsRepairedOnWritableOpen() async throws {
    let path = try await makeDirtyImage("dirty-rw.qcow2")
    let copy = scratch.file("dirty-qemu.qcow2")
    try FileManager.default.copyItem(atPath: path, toPath: copy)
    let node = try await openQcow2(path, readOnly: false)
    let driver = try #require(node.driver as? Qcow2Driver)
    #expect(driver.header.incompatibleFeatures & Qcow2Feature.dirty == 0)
    try await node.write(at: 1 << 20, bytes: [UInt8](repeating: 3, count: 65536))
    await node.close()
    // QEMU repairs the same way on its writable open.
    try await QcowTools.io(copy, ["write -P 3 1M 64k"])
    #expect(try contents(of: path) == contents(of: copy))
    let (status, output) = try await QEMUTools.run(QEMUTools.qemuImg, ["check", path])
    #expect(status == 0, "\(output)")
  }

  @Test func dirtyImageOpenedForCheckIsNotRepaired() async throws {
    let path = try await makeDirtyImage("dirty-check.qcow2")
    var context = OpenContext(node: NodeOptions(readOnly: false))
    context.forCheck = true
    let node = try await ImageOpener.open(filename: path, context: context)
    let driver = try #require(node.driver as? Qcow2Driver)
    #expect(driver.header.incompatibleFeatures & Qcow2Feature.dirty != 0)
    let result = try await driver.check(node)
    #expect(result.corruptions > 0)
    await node.close()
  }
}
