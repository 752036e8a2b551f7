import BlockCore
import BlockTestSupport
import Foundation
import Testing

@testable import BlockDrivers

/// A guest request applied both by Spindle and by qemu-io.
enum GuestOp: Sendable, CustomStringConvertible {
  case write(Int64, Int, UInt8)
  case zero(Int64, Int64, unmap: Bool)
  case discard(Int64, Int64)

  var qemuIO: String {
    switch self {
    case .write(let offset, let count, let byte): "write -P \(byte) \(offset) \(count)"
    case .zero(let offset, let count, let unmap): "write -z \(unmap ? "-u " : "")\(offset) \(count)"
    case .discard(let offset, let count): "discard \(offset) \(count)"
    }
  }

  var description: String { qemuIO }

  @BlockActor
  func apply(to node: BlockNode) async throws {
    switch self {
    case .write(let offset, let count, let byte):
      try await node.write(at: offset, bytes: [UInt8](repeating: byte, count: count))
    case .zero(let offset, let count, let unmap):
      try await node.writeZeroes(at: offset, count: count, flags: unmap ? .mayUnmap : [])
    case .discard(let offset, let count):
      try await node.discard(at: offset, count: count)
    }
  }

  /// A sequence touching every write path: COW with zeroes and backing data,
  /// in-place writes, zero clusters with and without unmap, preallocated zero
  /// clusters written again, discard and reuse of freed clusters.
  static let mixed: [GuestOp] = [
    .write(0, 4096, 0x11),
    .write(100_000, 200_000, 0x22),
    .write(0, 512, 0x33),
    .zero(1 << 20, 256 << 10, unmap: false),
    .write((1 << 20) + 4096, 4096, 0x44),
    .discard(65536, 65536),
    .write(3 << 20, 65536, 0x55),
    .zero(3 << 20, 65536, unmap: true),
    .write(65536, 4096, 0x66),
    .zero(131_072, 65536, unmap: false),
    .write(135_168, 1024, 0x77),
    .write((2 << 20) + 1000, 300_000, 0x88),
    .discard(2 << 20, 1 << 20),
    .write((2 << 20) + 70000, 5000, 0x99),
    // Partial-cluster zero-writes: over unallocated space, over data.
    .zero(3_200_000, 1000, unmap: false),
    .zero(100_000, 1000, unmap: false),
    .zero((4 << 20) - 1024, 1024, unmap: true),
  ]

  /// New clusters continue right after the COPIED clusters of the same
  /// request when free there, even when a lower cluster is free.
  static let continuation: [GuestOp] = [
    .write(0, 65536, 0x11),
    .write(65536, 65536, 0x22),
    .discard(0, 65536),
    .write(65536 + 60000, 10000, 0x33),
    .write(3 * 65536, 4096, 0x44),
    .write(65536 + 4096, 3 * 65536, 0x55),
  ]
}

/// Spindle and qemu-io apply the same requests to copies of one image: the
/// images must read the same, map the same, and Spindle's must check clean.
@Suite(
  "qcow2 write interop",
  .requires("qemu-img", "qemu-io"))
@BlockActor
struct Qcow2WriteTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  func openWritable(_ path: String) async throws -> BlockNode {
    try await ImageOpener.open(
      filename: path, context: OpenContext(node: NodeOptions(discard: .unmap)))
  }

  /// Applies `ops` with Spindle to `spindle` and with qemu-io to `qemu`, then
  /// compares the two images.
  func expectSameResult(
    _ ops: [GuestOp], spindle: String, qemu: String,
    sourceLocation: SourceLocation = #_sourceLocation
  ) async throws {
    let node = try await openWritable(spindle)
    for op in ops { try await op.apply(to: node) }
    await node.close()
    try await QcowTools.io(qemu, ops.map(\.qemuIO))

    let compare = try await QEMUTools.run(QEMUTools.qemuImg, ["compare", spindle, qemu])
    #expect(compare.status == 0, "\(compare.output)", sourceLocation: sourceLocation)
    let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", spindle])
    #expect(check.status == 0, "\(check.output)", sourceLocation: sourceLocation)
    #expect(
      check.output.contains("No errors were found"), "\(check.output)",
      sourceLocation: sourceLocation)
    let spindleMap = try await QcowTools.map(spindle)
    let qemuMap = try await QcowTools.map(qemu)
    let firstDifference = zip(spindleMap, qemuMap).first { $0 != $1 }
    #expect(
      spindleMap == qemuMap,
      "first difference: \(firstDifference.map { "\($0) vs QEMU's \($1)" } ?? "length")",
      sourceLocation: sourceLocation)
  }

  @Test(
    "mixed requests end as qemu-io's",
    arguments: [
      Qcow2Layout(), Qcow2Layout(compat: "0.10"), Qcow2Layout(clusterSize: 4096),
      Qcow2Layout(clusterSize: 512), Qcow2Layout(refcountBits: 1),
      Qcow2Layout(clusterSize: 4096, refcountBits: 64), Qcow2Layout(lazyRefcounts: true),
    ])
  func mixed(_ layout: Qcow2Layout) async throws {
    let spindle = scratch.file("spindle.qcow2")
    let qemu = scratch.file("qemu.qcow2")
    for path in [spindle, qemu] {
      try await QcowTools.img(["create", "-q", "-f", "qcow2", "-o", layout.options, path, "4M"])
    }
    try await expectSameResult(GuestOp.mixed, spindle: spindle, qemu: qemu)
  }

  @Test(
    "allocations continue after COPIED clusters as QEMU's do",
    arguments: [Qcow2Layout(), Qcow2Layout(clusterSize: 4096), Qcow2Layout(clusterSize: 512)])
  func continuation(_ layout: Qcow2Layout) async throws {
    let spindle = scratch.file("spindle.qcow2")
    let qemu = scratch.file("qemu.qcow2")
    for path in [spindle, qemu] {
      try await QcowTools.img(["create", "-q", "-f", "qcow2", "-o", layout.options, path, "4M"])
    }
    try await expectSameResult(GuestOp.continuation, spindle: spindle, qemu: qemu)
  }

  @Test(
    "filling small-cluster images grows the refcount table as QEMU does",
    arguments: [
      Qcow2Layout(clusterSize: 512), Qcow2Layout(clusterSize: 512, refcountBits: 64),
      Qcow2Layout(clusterSize: 512, refcountBits: 32),
    ])
  func refcountTableGrowth(_ layout: Qcow2Layout) async throws {
    let spindle = scratch.file("spindle.qcow2")
    let qemu = scratch.file("qemu.qcow2")
    for path in [spindle, qemu] {
      try await QcowTools.img(["create", "-q", "-f", "qcow2", "-o", layout.options, path, "24M"])
    }
    let ops: [GuestOp] = [
      .write(0, 3 << 20, 0x21), .write(12 << 20, 9 << 20, 0x42), .discard(1 << 20, 1 << 20),
      .write(5 << 20, 2 << 20, 0x63),
    ]
    try await expectSameResult(ops, spindle: spindle, qemu: qemu)
    let header = try Qcow2Header.parse(
      Array(try contents(of: spindle).prefix(layout.clusterSize)), fileLength: 1 << 40)
    #expect(header.refcountTableOffset != UInt64(layout.clusterSize))
  }

  @Test("writes after an internal snapshot copy shared L2 tables and keep the snapshot")
  func afterSnapshot() async throws {
    let spindle = scratch.file("spindle.qcow2")
    let qemu = scratch.file("qemu.qcow2")
    try await QcowTools.img([
      "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", spindle, "4M",
    ])
    try await QcowTools.io(spindle, ["write -P 0x10 0 3M", "write -c -P 0x30 3M 4k"])
    try await QcowTools.img(["snapshot", "-c", "first", spindle])
    let original = try await QcowTools.guestBytes(spindle, scratch: scratch)
    try FileManager.default.copyItem(atPath: spindle, toPath: qemu)
    try await expectSameResult(
      GuestOp.mixed + [.write(3 << 20, 4096, 0x31)], spindle: spindle, qemu: qemu)
    try await QcowTools.img(["snapshot", "-a", "first", spindle])
    #expect(try await QcowTools.guestBytes(spindle, scratch: scratch) == original)
    let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", spindle])
    #expect(check.status == 0, "\(check.output)")
  }

  @Test("writes over a backing file copy the rest of the cluster from it")
  func overBacking() async throws {
    let base = scratch.file("base.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", base, "3M"])
    try await QcowTools.io(base, ["write -P 0xab 0 3M"])
    for name in ["spindle.qcow2", "qemu.qcow2"] {
      try await QcowTools.img([
        "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", scratch.file(name), "4M",
      ])
    }
    try await expectSameResult(
      GuestOp.mixed, spindle: scratch.file("spindle.qcow2"), qemu: scratch.file("qemu.qcow2"))
  }

  @Test("concurrent allocating writes keep data and metadata consistent")
  func concurrentWrites() async throws {
    let path = scratch.file("disk.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "8M"])
    let node = try await openWritable(path)
    let writers = (0..<32).map { index in
      Task { @BlockActor in
        let offset = Int64(index) * 200_000 + 1000
        try await node.write(at: offset, bytes: [UInt8](repeating: UInt8(index + 1), count: 10_000))
      }
    }
    for writer in writers { try await writer.value }
    for index in 0..<32 {
      let offset = Int64(index) * 200_000 + 1000
      #expect(
        try await node.read(at: offset - 1, count: 10_002)
          == [0] + [UInt8](repeating: UInt8(index + 1), count: 10_000) + [0])
    }
    await node.close()
    let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", path])
    #expect(check.status == 0, "\(check.output)")
    let expected = try await QcowTools.guestBytes(path, scratch: scratch)
    #expect(expected[1000] == 1 && expected[31 * 200_000 + 1000] == 32)
  }

  @Test("a dirty image is repaired and marked clean by a writable open, read-only opens work")
  func dirtyImage() async throws {
    let path = scratch.file("disk.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", path, "1M"])
    try patchFile(path, at: 72, bigEndianBytes(Qcow2Feature.dirty, width: 8))
    await (try await openQcow2(path)).close()
    #expect(Array(try contents(of: path)[72..<80]) == bigEndianBytes(Qcow2Feature.dirty, width: 8))
    await (try await openWritable(path)).close()
    #expect(Array(try contents(of: path)[72..<80]) == bigEndianBytes(0, width: 8))
  }

  @Test("a writable open clears autoclear bits it does not maintain")
  func autoclear() async throws {
    let path = scratch.file("disk.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", path, "1M"])
    try patchFile(path, at: 88, bigEndianBytes(1 << 40 | Qcow2Feature.bitmaps, width: 8))
    await (try await openQcow2(path)).close()
    #expect(Array(try contents(of: path)[88..<96]) == bigEndianBytes(1 << 40 | 1, width: 8))
    await (try await openWritable(path)).close()
    #expect(Array(try contents(of: path)[88..<96]) == bigEndianBytes(0, width: 8))
  }
}

/// Growing an image as `qemu-img resize` grows it.
@Suite(
  "qcow2 resize",
  .requires("qemu-img", "qemu-io"))
@BlockActor
struct Qcow2ResizeTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  @Test(
    "growing, with and without a larger L1 table, gives qemu-img resize's file",
    arguments: [(65536, Int64(100 << 20)), (65536, Int64(3 << 30)), (4096, Int64(100 << 20))])
  func grow(clusterSize: Int, newSize: Int64) async throws {
    let spindle = scratch.file("spindle.qcow2")
    let qemu = scratch.file("qemu.qcow2")
    try await QcowTools.img([
      "create", "-q", "-f", "qcow2", "-o", "cluster_size=\(clusterSize)", spindle, "1M",
    ])
    try await QcowTools.io(spindle, ["write -P 7 1000 100000"])
    try FileManager.default.copyItem(atPath: spindle, toPath: qemu)
    let node = try await ImageOpener.open(filename: spindle)
    try await node.truncate(to: newSize)
    #expect(node.length == newSize)
    try await node.write(at: newSize - 5000, bytes: [UInt8](repeating: 9, count: 5000))
    await node.close()
    try await QcowTools.img(["resize", "-q", qemu, String(newSize)])
    try await QcowTools.io(qemu, ["write -P 9 \(newSize - 5000) 5000"])
    let mine = try contents(of: spindle)
    let theirs = try contents(of: qemu)
    let firstDifference = (0..<min(mine.count, theirs.count)).first { mine[$0] != theirs[$0] }
    #expect(
      mine == theirs,
      "sizes \(mine.count)/\(theirs.count), first difference at \(firstDifference ?? -1)")
    let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", spindle])
    #expect(check.status == 0, "\(check.output)")
  }
}

/// The driver under the engine's concurrency: copy-on-read into the overlay
/// and many requests of every kind in flight at once.
@Suite(
  "qcow2 under the engine",
  .requires("qemu-img", "qemu-io"))
@BlockActor
struct Qcow2EngineTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  @Test("copy-on-read copies backing clusters into the overlay")
  func copyOnRead() async throws {
    let base = scratch.file("base.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", base, "2M"])
    try await QcowTools.io(base, ["write -P 0x3c 0 2M"])
    let top = scratch.file("top.qcow2")
    try await QcowTools.img([
      "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top, "2M",
    ])
    let node = try await ImageOpener.open(
      filename: top, context: OpenContext(node: NodeOptions(copyOnRead: true)))
    #expect(try await node.read(at: 70000, count: 1000) == [UInt8](repeating: 0x3c, count: 1000))
    await node.close()
    let map = try await QcowTools.map(top)
    #expect(
      map.first
        == MapEntry(
          start: 0, length: 65536, depth: 1, present: true, zero: false, data: true,
          offset: map.first?.offset))
    #expect(map.dropFirst().first?.depth == 0)
    #expect(map.dropFirst().first?.start == 65536 && map.dropFirst().first?.length == 65536)
    let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", top])
    #expect(check.status == 0, "\(check.output)")
    #expect(
      try await QcowTools.guestBytes(top, scratch: scratch)
        == [UInt8](repeating: 0x3c, count: 2 << 20))
  }

  @Test("concurrent writes, zero-writes and discards on disjoint ranges end as applied one by one")
  func concurrentMix() async throws {
    let path = scratch.file("disk.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "8M"])
    let node = try await ImageOpener.open(
      filename: path, context: OpenContext(node: NodeOptions(discard: .unmap)))
    // Prefill so that discards and zero-writes free clusters while others allocate.
    try await node.write(at: 0, bytes: [UInt8](repeating: 0xee, count: 8 << 20))
    var model = [UInt8](repeating: 0xee, count: 8 << 20)
    var ops: [GuestOp] = []
    for index in 0..<48 {
      let base = Int64(index) * (160 << 10)
      switch index % 4 {
      case 0: ops.append(.write(base + 123, 50_000, UInt8(index)))
      case 1: ops.append(.zero(base, 64 << 10, unmap: index % 8 == 1))
      case 2: ops.append(.discard(base, 96 << 10))
      default: ops.append(.write(base + 4096, 100_000, UInt8(index)))
      }
    }
    for op in ops {
      switch op {
      case .write(let offset, let count, let byte):
        model.replaceSubrange(
          Int(offset)..<Int(offset) + count, with: repeatElement(byte, count: count))
      case .zero(let offset, let count, _), .discard(let offset, let count):
        model.replaceSubrange(
          Int(offset)..<Int(offset + count), with: repeatElement(0, count: Int(count)))
      }
    }
    let tasks = ops.map { op in Task { @BlockActor in try await op.apply(to: node) } }
    for task in tasks { try await task.value }
    #expect(try await node.read(at: 0, count: model.count) == model)
    await node.close()
    let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", path])
    #expect(check.status == 0, "\(check.output)")
    #expect(try await QcowTools.guestBytes(path, scratch: scratch) == model)
  }
}

/// Compressed writes, byte for byte as qemu-io's `write -c`.
@Suite(
  "qcow2 compressed writes",
  .requires("qemu-img", "qemu-io"))
@BlockActor
struct Qcow2CompressedWriteTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  @Test("the same file as qemu-io write -c", arguments: [65536, 4096, 512])
  func sameAsQemuIO(clusterSize: Int) async throws {
    var text = [UInt8]()
    while text.count < 2 * clusterSize {
      text += Array("qcow2 compressed cluster \(text.count) ".utf8)
    }
    text = Array(text.prefix(2 * clusterSize))
    var seed: UInt64 = 42
    let noise = (0..<clusterSize).map { _ in
      seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      return UInt8(truncatingIfNeeded: seed >> 33)
    }
    let textFile = try scratch.makeFile("text.bin", bytes: text)
    let noiseFile = try scratch.makeFile("noise.bin", bytes: noise)
    let secondTextFile = try scratch.makeFile("text2.bin", bytes: Array(text[clusterSize...]))
    let spindle = scratch.file("spindle.qcow2")
    let qemu = scratch.file("qemu.qcow2")
    for path in [spindle, qemu] {
      try await QcowTools.img([
        "create", "-q", "-f", "qcow2", "-o", "cluster_size=\(clusterSize)", path, "1M",
      ])
    }
    let cs = clusterSize
    let node = try await ImageOpener.open(filename: spindle)
    try await node.writeCompressed(at: 0, from: vector(Array(text.prefix(cs))))
    try await node.writeCompressed(
      at: Int64(cs), from: vector([UInt8](repeating: 0x41, count: cs)))
    try await node.writeCompressed(at: Int64(2 * cs), from: vector(noise))
    try await node.writeCompressed(at: Int64(5 * cs), from: vector(text))
    try await node.write(at: Int64(cs) + 100, bytes: [UInt8](repeating: 0x55, count: 100))
    let error = await expectBlockError {
      try await node.writeCompressed(at: 0, from: vector(Array(text.prefix(cs))))
    }
    #expect(error?.code == .ioError)
    await node.close()
    try await QcowTools.io(
      qemu,
      [
        "write -c -s \(textFile) 0 \(cs)", "write -c -P 0x41 \(cs) \(cs)",
        "write -c -s \(noiseFile) \(2 * cs) \(cs)",
        // One cluster per command: QEMU compresses the clusters of one request
        // in parallel and allocates them in completion order.
        "write -c -s \(textFile) \(5 * cs) \(cs)", "write -c -s \(secondTextFile) \(6 * cs) \(cs)",
        "write -P 0x55 \(cs + 100) 100",
      ])
    let mine = try contents(of: spindle)
    let theirs = try contents(of: qemu)
    let firstDifference = (0..<min(mine.count, theirs.count)).first { mine[$0] != theirs[$0] }
    #expect(
      mine == theirs,
      "sizes \(mine.count)/\(theirs.count), first difference at \(firstDifference ?? -1)")
    let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", spindle])
    #expect(check.status == 0, "\(check.output)")
  }

  private func vector(_ bytes: [UInt8]) -> IOVector {
    let iov = IOVector(allocating: bytes.count)
    bytes.withUnsafeBytes { iov.copyIn($0) }
    return iov
  }
}
