import BlockCore
import BlockTestSupport
import Foundation
import Testing

@testable import BlockDrivers

/// Extended L2 entries (`extended_l2=on`, 32 subclusters per cluster): reads,
/// block status, allocating writes, zero-writes and discards at subcluster
/// granularity, as QEMU 7.2 does them.
@Suite(
  "qcow2 subclusters",
  .requires("qemu-img", "qemu-io"))
@BlockActor
struct Qcow2SubclusterTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  /// Requests that hit subclusters partly and wholly, across clusters.
  static func subclusterOps(clusterSize: Int64) -> [GuestOp] {
    let sub = clusterSize / 32
    return [
      .write(100, 1000, 0x11),
      .write(3 * sub + 7, Int(2 * sub), 0x22),
      .write(clusterSize - sub / 2, Int(sub), 0x33),
      .zero(5 * sub, 3 * sub, unmap: false),
      .zero(2 * clusterSize + 4 * sub, 2 * sub, unmap: false),
      .write(2 * clusterSize + 5 * sub + 10, 20, 0x44),
      .zero(6 * clusterSize, clusterSize, unmap: false),
      .write(6 * clusterSize + sub, Int(sub), 0x55),
      .write(8 * clusterSize + 17, Int(3 * clusterSize), 0x66),
      .zero(9 * clusterSize, clusterSize, unmap: true),
      .discard(10 * clusterSize, clusterSize),
      .write(10 * clusterSize + 31 * sub, Int(2 * sub), 0x77),
      .zero(12 * clusterSize + sub, sub / 2, unmap: false),
      .zero(13 * clusterSize + 2 * sub, 10 * sub, unmap: true),
      .write(0, 64, 0x88),
    ]
  }

  /// An image `size` bytes big with extended L2 entries, optionally over a
  /// backing file full of data.
  func makeImage(
    _ name: String, clusterSize: Int64, size: Int64, backing: String? = nil
  ) async throws -> String {
    let path = scratch.file(name)
    var arguments = [
      "create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=\(clusterSize)",
    ]
    if let backing { arguments += ["-b", backing, "-F", "qcow2"] }
    try await QcowTools.img(arguments + [path, String(size)])
    return path
  }

  func makeBase(size: Int64) async throws -> String {
    let base = scratch.file("base.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", base, String(size)])
    try await QcowTools.io(base, ["write -P 0xab 0 \(size)"])
    return base
  }

  @Test(
    "images qemu-io wrote read and map as QEMU's",
    arguments: [
      (Int64(16384), false), (Int64(65536), false), (Int64(65536), true), (Int64(2 << 20), false),
    ])
  func readInterop(clusterSize: Int64, withBacking: Bool) async throws {
    let size = 16 * clusterSize
    let backing = withBacking ? try await makeBase(size: size) : nil
    let path = try await makeImage(
      "disk.qcow2", clusterSize: clusterSize, size: size, backing: backing)
    try await QcowTools.io(path, Self.subclusterOps(clusterSize: clusterSize).map(\.qemuIO))
    try await Qcow2ReadTests().expectSameAsQEMU(path)
    let node = try await openQcow2(path)
    let expected = try await QcowTools.guestBytes(path, scratch: scratch)
    try await Qcow2FeatureTests.expectGridReads(node, expected: expected)
    await node.close()
  }

  @Test("data past the first L2 table maps and reads as QEMU's")
  func manyL2Tables() async throws {
    // 64 KiB clusters with 16-byte entries: one L2 table maps 256 MiB.
    let path = try await makeImage("big.qcow2", clusterSize: 65536, size: 3 << 30)
    let spots: [(Int64, Int)] = [
      ((256 << 20) - 3000, 6000), ((1 << 30) + 12345, 70000), ((3 << 30) - 5000, 5000),
    ]
    try await QcowTools.io(
      path, spots.enumerated().map { "write -P \($0.offset + 1) \($0.element.0) \($0.element.1)" })
    let node = try await openQcow2(path)
    #expect(try await spindleMap(node) == QcowTools.map(path))
    for (index, (offset, count)) in spots.enumerated() {
      let after = min(100, Int((3 << 30) - offset) - count)
      #expect(
        try await node.read(at: offset - 100, count: count + 100 + after)
          == [UInt8](repeating: 0, count: 100) + [UInt8](repeating: UInt8(index + 1), count: count)
          + [UInt8](repeating: 0, count: after))
    }
    await node.close()
  }

  @Test("compressed clusters of an image with extended L2 entries read as QEMU's")
  func compressed() async throws {
    let raw = try scratch.makeFile("source.raw", bytes: Qcow2FeatureTests.mixedContent(1 << 20))
    let path = scratch.file("compressed.qcow2")
    try await QcowTools.img([
      "convert", "-c", "-O", "qcow2", "-o", "extended_l2=on,cluster_size=32768", "-f", "raw", raw,
      path,
    ])
    try await QcowTools.io(path, ["write -P 1 70000 3000", "write -z 131072 1024"])
    try await Qcow2ReadTests().expectSameAsQEMU(path)
  }

  @Test(
    "requests at subcluster granularity end as qemu-io's",
    arguments: [(Int64(16384), false), (Int64(65536), false), (Int64(65536), true)])
  func writeInterop(clusterSize: Int64, withBacking: Bool) async throws {
    let size = 16 * clusterSize
    let backing = withBacking ? try await makeBase(size: size) : nil
    let spindle = try await makeImage(
      "spindle.qcow2", clusterSize: clusterSize, size: size, backing: backing)
    let qemu = try await makeImage(
      "qemu.qcow2", clusterSize: clusterSize, size: size, backing: backing)
    try await Qcow2WriteTests().expectSameResult(
      Self.subclusterOps(clusterSize: clusterSize), spindle: spindle, qemu: qemu)
  }

  @Test(
    "random requests end as qemu-io's",
    arguments: [(UInt64(1), false), (2, false), (3, true), (4, true)])
  func randomRequests(seed: UInt64, withBacking: Bool) async throws {
    let clusterSize: Int64 = 32768
    let size = 12 * clusterSize
    var state = seed &* 0x9E37_79B9_7F4A_7C15
    func next(_ bound: Int64) -> Int64 {
      state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      return Int64((state >> 33) % UInt64(bound))
    }
    var ops: [GuestOp] = []
    for index in 0..<40 {
      let sub = clusterSize / 32
      let offset = next(size / 512) * 512
      let length = min(size - offset, (next(3 * clusterSize / 512) + 1) * 512)
      switch next(5) {
      case 0, 1: ops.append(.write(offset, Int(length), UInt8(index + 1)))
      case 2:
        ops.append(
          .zero(offset & ~(sub - 1), min(size - (offset & ~(sub - 1)), 4 * sub), unmap: false))
      case 3:
        let start = offset & ~(clusterSize - 1)
        ops.append(.zero(start, min(size - start, clusterSize), unmap: true))
      default:
        let start = offset & ~(clusterSize - 1)
        ops.append(.discard(start, min(size - start, 2 * clusterSize)))
      }
    }
    let backing = withBacking ? try await makeBase(size: size) : nil
    let spindle = try await makeImage(
      "spindle.qcow2", clusterSize: clusterSize, size: size, backing: backing)
    let qemu = try await makeImage(
      "qemu.qcow2", clusterSize: clusterSize, size: size, backing: backing)
    try await Qcow2WriteTests().expectSameResult(ops, spindle: spindle, qemu: qemu)
  }

  @Test("compressed writes give the same file as qemu-io write -c")
  func compressedWrites() async throws {
    let cs = 32768
    let text = Qcow2FeatureTests.mixedContent(cs)
    let textFile = try scratch.makeFile("text.bin", bytes: text)
    let spindle = try await makeImage("spindle.qcow2", clusterSize: Int64(cs), size: 1 << 20)
    let qemu = try await makeImage("qemu.qcow2", clusterSize: Int64(cs), size: 1 << 20)
    let node = try await ImageOpener.open(filename: spindle)
    try await node.writeCompressed(at: 0, from: Qcow2FeatureTests.vector(text))
    try await node.writeCompressed(at: Int64(3 * cs), from: Qcow2FeatureTests.vector(text))
    try await node.write(at: 100, bytes: [UInt8](repeating: 9, count: 100))
    await node.close()
    try await QcowTools.io(
      qemu,
      [
        "write -c -s \(textFile) 0 \(cs)", "write -c -s \(textFile) \(3 * cs) \(cs)",
        "write -P 9 100 100",
      ])
    try Qcow2FeatureTests.expectSameFiles(spindle, qemu)
  }

  @Test("a crash after any request leaves at worst leaks")
  func crashes() async throws {
    var options = Qcow2CreateOptions(size: 4 << 20)
    options.clusterSize = 16384
    options.extendedL2 = true
    let disk = WriteLogDriver(try Qcow2Create.layout(options))
    let file = BlockNode(name: "write-log", driver: disk)
    try await file.open()
    let node = try await Qcow2Driver.open(
      over: file, imagePath: nil, context: OpenContext(node: NodeOptions(discard: .unmap)))
    let path = scratch.file("crashed.qcow2")
    for (step, op) in (Self.subclusterOps(clusterSize: 16384) + GuestOp.mixed).enumerated() {
      try await op.apply(to: node)
      let survivors: [(String, (Int) -> Bool)] = [
        ("none", { _ in false }), ("all", { _ in true }), ("odd", { $0 % 2 == 1 }),
        ("every third", { $0 % 3 == 0 }),
      ]
      for (name, keep) in survivors {
        try Data(disk.image(afterFlush: disk.flushCount, keeping: keep)).write(
          to: URL(fileURLWithPath: path))
        let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", path])
        // 0: clean, 3: leaked clusters only; 2 would be corruption.
        #expect(
          check.status == 0 || check.status == 3,
          "after step \(step) (\(op)), keeping \(name) of the unflushed writes: \(check.output)")
      }
    }
    await node.close()
  }

  @Test("an entry with a subcluster both allocated and zero fails reads with EIO")
  func invalidBitmap() async throws {
    let path = try await makeImage("disk.qcow2", clusterSize: 65536, size: 1 << 20)
    try await QcowTools.io(path, ["write -P 1 0 4096"])
    let node = try await openQcow2(path)
    let driver = try #require(node.driver as? Qcow2Driver)
    let l2Offset = Int(driver.l1Table[0] & Qcow2Entry.offsetMask)
    await node.close()
    // The first entry's bitmap: subcluster 0 allocated and zero.
    try patchFile(path, at: l2Offset + 8, bigEndianBytes(1 << 32 | 1, width: 8))
    let reopened = try await openQcow2(path)
    let error = await expectBlockError { _ = try await reopened.read(at: 0, count: 512) }
    #expect(error?.code == .ioError)
    await reopened.close()
  }
}

/// The extended L2 bitmap rules, without QEMU.
@Suite("qcow2 subcluster bitmaps")
struct Qcow2SubclusterBitmapTests {
  @Test("entry types: data at offset 0 in a data file, no zero flag with extended entries")
  func entryTypes() {
    #expect(Qcow2Entry.type(of: Qcow2Entry.copied) == .unallocated)
    #expect(Qcow2Entry.type(of: Qcow2Entry.copied, dataFile: true) == .normal)
    #expect(Qcow2Entry.type(of: Qcow2Entry.copied | 1, dataFile: true) == .zeroPlain)
    #expect(Qcow2Entry.type(of: 0x50000 | 1, extendedL2: true) == .normal)
    #expect(Qcow2Entry.type(of: 1, extendedL2: true) == .unallocated)
  }

  @Test("subcluster types and runs")
  func runs() {
    let host = Qcow2Entry.copied | 0x50000
    // Subclusters 0-3 data, 4-5 zero, 6-31 unallocated.
    let bitmap = Qcow2SubclusterBitmap.allocated(0, 4) | Qcow2SubclusterBitmap.zeroes(4, 6)
    func run(_ entry: UInt64, _ bitmap: UInt64, _ from: Int) -> (Qcow2ClusterType, Int)? {
      Qcow2SubclusterBitmap.run(entry: entry, bitmap: bitmap, from: from, dataFile: false)
        .map { ($0.type, $0.count) }
    }
    #expect(run(host, bitmap, 0)! == (.normal, 4))
    #expect(run(host, bitmap, 2)! == (.normal, 2))
    #expect(run(host, bitmap, 4)! == (.zeroAllocated, 2))
    #expect(run(host, bitmap, 6)! == (.unallocatedAllocated, 26))
    #expect(run(0, Qcow2SubclusterBitmap.zeroes(0, 32), 5)! == (.zeroPlain, 27))
    #expect(run(0, Qcow2SubclusterBitmap.zeroes(8, 9), 0)! == (.unallocated, 8))
    #expect(run(0, 0, 31)! == (.unallocated, 1))
    // Allocation bits without a host cluster, or a subcluster both
    // allocated and zero, are invalid.
    #expect(run(0, 1, 3) == nil)
    #expect(run(host, 1 | 1 << 32, 9) == nil)
    let compressed = Qcow2Entry.compressed | 0x1234
    #expect(run(compressed, 0, 7)! == (.compressed, 25))
  }
}
