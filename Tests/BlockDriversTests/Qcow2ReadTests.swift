import BlockCore
import BlockTestSupport
import Foundation
import Testing

@testable import BlockDrivers

/// qemu-img create options for one image layout.
struct Qcow2Layout: Sendable, CustomStringConvertible {
  var compat = "1.1"
  var clusterSize = 65536
  var refcountBits = 16
  var lazyRefcounts = false

  var options: String {
    var text = "compat=\(compat),cluster_size=\(clusterSize),refcount_bits=\(refcountBits)"
    if lazyRefcounts { text += ",lazy_refcounts=on" }
    return text
  }
  var description: String { options }

  static let all: [Qcow2Layout] = [
    Qcow2Layout(),
    Qcow2Layout(compat: "0.10"),
    Qcow2Layout(clusterSize: 512),
    Qcow2Layout(clusterSize: 4096),
    Qcow2Layout(clusterSize: 2 << 20),
    Qcow2Layout(compat: "0.10", clusterSize: 4096),
    Qcow2Layout(refcountBits: 1),
    Qcow2Layout(clusterSize: 4096, refcountBits: 64),
    Qcow2Layout(lazyRefcounts: true),
  ]
}

/// Reading images qemu-img and qemu-io wrote: guest bytes equal to
/// `qemu-img convert -O raw`, block status equal to `qemu-img map`.
@Suite(
  "qcow2 read interop",
  .requires("qemu-img", "qemu-io"))
@BlockActor
struct Qcow2ReadTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  /// Checks Spindle's view of `path` against QEMU's.
  func expectSameAsQEMU(_ path: String, sourceLocation: SourceLocation = #_sourceLocation)
    async throws
  {
    let expected = try await QcowTools.guestBytes(path, scratch: scratch)
    let node = try await openQcow2(path)
    #expect(node.driver.formatName == "qcow2", sourceLocation: sourceLocation)
    #expect(node.length == Int64(expected.count), sourceLocation: sourceLocation)
    let actual = try await node.read(at: 0, count: expected.count)
    #expect(actual == expected, "guest bytes differ", sourceLocation: sourceLocation)
    let map = try await spindleMap(node)
    let qemuMap = try await QcowTools.map(path)
    #expect(map == qemuMap, sourceLocation: sourceLocation)
    // The engine's chain walk agrees on what each extent reads as and where.
    for entry in qemuMap {
      var offset = entry.start
      while offset < entry.start + entry.length {
        let (status, _) = try await node.blockStatusAbove(
          base: nil, offset: offset, bytes: entry.start + entry.length - offset, wantZero: true)
        #expect(status.count > 0, sourceLocation: sourceLocation)
        let flags = status.flags
        #expect(flags.contains(.data) == entry.data, "\(entry)", sourceLocation: sourceLocation)
        #expect(flags.contains(.zero) == entry.zero, "\(entry)", sourceLocation: sourceLocation)
        if let mapped = entry.offset {
          #expect(status.mapOffset == mapped + offset - entry.start, sourceLocation: sourceLocation)
        }
        offset += max(status.count, 1)
      }
    }
    await node.close()
  }

  @Test("images of every layout read as QEMU reads them", arguments: Qcow2Layout.all)
  func layouts(_ layout: Qcow2Layout) async throws {
    let path = scratch.file("disk.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", "-o", layout.options, path, "6M"])
    var commands = [
      "write -P 0x11 0 4096",
      "write -P 0x22 65000 70000",
      "write -P 0x33 3M 1M",
      "write -P 0x44 5767168 512",
    ]
    if layout.compat == "1.1" {
      commands += ["write -z 3200K 128K", "write -z 4M 256K", "write -z -u 3M 64K"]
    }
    try await QcowTools.io(path, commands)
    try await expectSameAsQEMU(path)

    let node = try await openQcow2(path)
    #expect(node.clusterSize == Int64(layout.clusterSize))
    let driver = try #require(node.driver as? Qcow2Driver)
    #expect(driver.header.refcountBits == layout.refcountBits)
    #expect(driver.header.version == (layout.compat == "1.1" ? 3 : 2))
    #expect(
      driver.header.compatibleFeatures & Qcow2Feature.lazyRefcounts
        == (layout.lazyRefcounts ? Qcow2Feature.lazyRefcounts : 0))
    // Unaligned reads crossing cluster and type boundaries.
    let expected = try await QcowTools.guestBytes(path, scratch: scratch)
    for (offset, count) in [(4095, 3), (65000 - 7, 70_100), (3_276_800 - 11, 200_000)] {
      #expect(
        try await node.read(at: Int64(offset), count: count)
          == Array(expected[offset..<offset + count]))
    }
    await node.close()
  }

  @Test("compressed clusters inflate", arguments: [4096, 65536])
  func compressed(clusterSize: Int) async throws {
    let raw = scratch.file("source.raw")
    var bytes = [UInt8](repeating: 0, count: 1 << 20)
    // Compressible text, incompressible noise, and zeroes.
    for index in 0..<(256 << 10) { bytes[index] = UInt8(ascii: "a") + UInt8(index % 26) }
    var seed: UInt64 = 0x1234_5678
    for index in (512 << 10)..<(640 << 10) {
      seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      bytes[index] = UInt8(truncatingIfNeeded: seed >> 33)
    }
    try Data(bytes).write(to: URL(fileURLWithPath: raw))
    let path = scratch.file("compressed.qcow2")
    try await QcowTools.img([
      "convert", "-c", "-O", "qcow2", "-o", "cluster_size=\(clusterSize)", "-f", "raw", raw, path,
    ])
    try await expectSameAsQEMU(path)
    let node = try await openQcow2(path)
    #expect(try await node.read(at: 0, count: bytes.count) == bytes)
    let status = try await node.blockStatus(offset: 0, bytes: 4096, wantZero: true)
    #expect(status.flags.contains(.data))
    #expect(!status.flags.contains(.offsetValid))
    await node.close()
  }

  @Test("backing chains: relative names, formats, a shorter backing file")
  func backingChain() async throws {
    try FileManager.default.createDirectory(
      atPath: scratch.file("images"), withIntermediateDirectories: true)
    let base = scratch.file("images/base.raw")
    try Data(pattern(2 << 20, seed: 9)).write(to: URL(fileURLWithPath: base))
    let middle = scratch.file("images/middle.qcow2")
    try await QcowTools.img([
      "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", middle, "3M",
    ])
    try await QcowTools.io(middle, ["write -P 0x55 1M 100K", "write -z 1536K 64K"])
    let top = scratch.file("images/top.qcow2")
    try await QcowTools.img([
      "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "middle.qcow2", "-F",
      "qcow2", top, "5M",
    ])
    try await QcowTools.io(
      top, ["write -P 0x66 1000K 50K", "write -P 0x77 4M 4K", "write -z 2M 8K"])

    // Opened from another working directory: names resolve against the folder.
    let node = try await openQcow2(top)
    let middleNode = try #require(node.backing)
    #expect(middleNode.driver.formatName == "qcow2")
    #expect(middleNode.isReadOnly)
    #expect(middleNode.backing?.driver.formatName == "raw")
    await node.close()
    try await expectSameAsQEMU(top)
    try await expectSameAsQEMU(middle)

    // The engine's chain walk agrees on allocation depth.
    let again = try await openQcow2(top)
    let (depth, _) = try await again.isAllocatedAbove(base: nil, offset: 1_100_000, bytes: 4096)
    #expect(depth == 2)
    let (topDepth, _) = try await again.isAllocatedAbove(base: nil, offset: 1_024_000, bytes: 4096)
    #expect(topDepth == 1)
    await again.close()
  }

  @Test("the active layer of an image with internal snapshots reads as QEMU reads it")
  func snapshots() async throws {
    let path = scratch.file("snap.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", path, "2M"])
    try await QcowTools.io(path, ["write -P 0x10 0 1M"])
    try await QcowTools.img(["snapshot", "-c", "first", path])
    try await QcowTools.io(path, ["write -P 0x20 64k 64k", "write -z 512k 128k"])
    try await expectSameAsQEMU(path)
  }

  @Test("a missing backing file fails the open with its name")
  func missingBacking() async throws {
    let path = scratch.file("overlay.qcow2")
    try await QcowTools.img([
      "create", "-q", "-f", "qcow2", "-b", "gone.qcow2", "-F", "qcow2", "-u", path, "1M",
    ])
    let error = await expectBlockError { _ = try await openQcow2(path) }
    #expect(error?.message.hasPrefix("Could not open backing file:") == true)
    #expect(error?.message.contains("gone.qcow2") == true)
  }
}
