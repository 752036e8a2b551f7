import BlockCore
import BlockTestSupport
import Foundation
import Testing

@testable import BlockDrivers

/// Many allocating writes, zero-writes and discards in flight at once on one
/// qcow2 node, against an in-memory model of the guest disk: each batch
/// splits the disk into byte ranges at random (unaligned) points, so that
/// neighbouring requests share clusters (copy-on-write of a cluster another
/// request is allocating, in-place writes into a cluster just allocated),
/// and runs one request per range concurrently. Every batch must read back
/// as the model says, and the closed image must pass `qemu-img check` and
/// convert to the model's bytes.
@Suite(
  "qcow2 concurrent request stress",
  .requires("qemu-img"))
@BlockActor
struct Qcow2ConcurrencyStressTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  /// The image layouts the stress runs on (qemu-img create -o values).
  nonisolated static let layouts = [
    "cluster_size=4096",
    "cluster_size=65536",
    "cluster_size=65536,extended_l2=on",
  ]

  nonisolated static let diskSize = 1 << 20

  @Test("concurrent writes, zero-writes and discards end as the model says", arguments: layouts)
  func stress(layout: String) async throws {
    for seed in UInt64(1)...8 {
      try await run(layout: layout, seed: seed, backing: seed % 3 == 0)
    }
  }

  /// One seed: a new image (over a backing file with random data when
  /// `backing`), two concurrent batches, then the checks.
  private func run(layout: String, seed: UInt64, backing: Bool) async throws {
    var random = KillTestSeed(state: seed &* 0x5851_F42D_4C95_7F2D ^ UInt64(layout.count))
    let path = scratch.file("stress-\(seed).qcow2")
    var model = [UInt8](repeating: 0, count: Self.diskSize)
    if backing {
      let base = scratch.file("stress-base-\(seed).qcow2")
      try await QcowTools.img([
        "create", "-q", "-f", "qcow2", "-o", layout, base, "\(Self.diskSize)",
      ])
      let baseNode = try await ImageOpener.open(filename: base)
      // A random byte per 512-byte sector: backing data differs everywhere.
      model = (0..<Self.diskSize / 512).flatMap { _ in
        repeatElement(UInt8.random(in: 1...255, using: &random), count: 512)
      }
      try await baseNode.write(at: 0, bytes: model)
      await baseNode.close()
      try await QcowTools.img([
        "create", "-q", "-f", "qcow2", "-o", layout, "-b", base, "-F", "qcow2", path,
        "\(Self.diskSize)",
      ])
    } else {
      try await QcowTools.img([
        "create", "-q", "-f", "qcow2", "-o", layout, path, "\(Self.diskSize)",
      ])
    }
    let node = try await ImageOpener.open(
      filename: path, context: OpenContext(node: NodeOptions(discard: .unmap)))
    let clusterSize: Int64 = layout.hasPrefix("cluster_size=4096") ? 4096 : 65536
    for batch in 0..<2 {
      let ops = Self.batch(clusterSize: clusterSize, backing: backing, using: &random)
      for op in ops { Self.apply(op, to: &model) }
      let tasks = ops.map { op in Task { @BlockActor in try await op.apply(to: node) } }
      for task in tasks { try await task.value }
      let read = try await node.read(at: 0, count: Self.diskSize)
      if let mismatch = read.indices.first(where: { read[$0] != model[$0] }) {
        let cluster = mismatch / Int(clusterSize) * Int(clusterSize)
        let touching = ops.filter { op in
          stride(from: cluster, to: cluster + Int(clusterSize), by: 512).contains {
            Self.covers(op, $0)
          }
        }
        Issue.record(
          "seed \(seed) batch \(batch) \(layout): first difference at \(mismatch): read \(read[mismatch]), expected \(model[mismatch]); requests in its cluster: \(touching)"
        )
        break
      }
    }
    await node.close()
    let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", path])
    #expect(check.status == 0, "seed \(seed) \(layout): \(check.output)")
    #expect(
      try await QcowTools.guestBytes(path, scratch: scratch) == model,
      "seed \(seed) \(layout): qemu-img reads other bytes")
  }

  /// Requests on disjoint byte ranges covering the disk, in random order:
  /// writes at any byte, zero-writes (some unmapping) at any byte, and
  /// discards of the whole clusters inside their range (no other request
  /// of the batch touches them, so the result does not depend on order).
  /// Discards are left out over a backing file, where a discarded cluster
  /// reads the backing file's data again.
  static func batch(clusterSize: Int64, backing: Bool, using random: inout KillTestSeed)
    -> [GuestOp]
  {
    let cuts = (0..<24).map { _ in Int64.random(in: 1..<Int64(diskSize), using: &random) }
    let points = [0] + Set(cuts).sorted() + [Int64(diskSize)]
    var ops: [GuestOp] = []
    for (start, end) in zip(points, points.dropFirst()) {
      switch Int.random(in: 0..<10, using: &random) {
      case 0..<5:
        ops.append(.write(start, Int(end - start), UInt8.random(in: 1...255, using: &random)))
      case 5..<7:
        ops.append(.zero(start, end - start, unmap: Bool.random(using: &random)))
      case 7..<9 where !backing:
        let first = (start + clusterSize - 1) / clusterSize * clusterSize
        let last = end / clusterSize * clusterSize
        if first < last { ops.append(.discard(first, last - first)) }
      default:
        break
      }
    }
    ops.shuffle(using: &random)
    return ops
  }

  /// Whether `op` covers byte `offset`.
  static func covers(_ op: GuestOp, _ offset: Int) -> Bool {
    switch op {
    case .write(let start, let count, _): Int(start) <= offset && offset < Int(start) + count
    case .zero(let start, let count, _), .discard(let start, let count):
      Int(start) <= offset && offset < Int(start + count)
    }
  }

  /// What `op` leaves in the guest disk `model`.
  static func apply(_ op: GuestOp, to model: inout [UInt8]) {
    switch op {
    case .write(let offset, let count, let byte):
      model.replaceSubrange(
        Int(offset)..<Int(offset) + count, with: repeatElement(byte, count: count))
    case .zero(let offset, let count, _), .discard(let offset, let count):
      model.replaceSubrange(
        Int(offset)..<Int(offset + count), with: repeatElement(0, count: Int(count)))
    }
  }
}
