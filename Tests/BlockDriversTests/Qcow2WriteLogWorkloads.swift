import BlockCore
import Foundation

@testable import BlockDrivers

/// A guest request of a write-log workload.
enum LoggedOp: Sendable, CustomStringConvertible {
  case write(Int64, Int, UInt8)
  case compressed(Int64, clusters: Int, UInt8)
  case zero(Int64, Int64, unmap: Bool)
  case discard(Int64, Int64)
  case grow(Int64)

  var description: String {
    switch self {
    case .write(let offset, let count, let byte): "write \(byte) at \(offset)+\(count)"
    case .compressed(let offset, let clusters, let byte):
      "compressed \(byte) at \(offset), \(clusters) clusters"
    case .zero(let offset, let count, let unmap): "zero\(unmap ? " unmap" : "") \(offset)+\(count)"
    case .discard(let offset, let count): "discard \(offset)+\(count)"
    case .grow(let size): "grow to \(size)"
    }
  }

  /// Applies the request to a qcow2 node with `clusterSize` clusters.
  @BlockActor
  func apply(to node: BlockNode, clusterSize: Int64) async throws {
    switch self {
    case .write(let offset, let count, let byte):
      try await node.write(at: offset, bytes: [UInt8](repeating: byte, count: count))
    case .compressed(let offset, let clusters, let byte):
      let bytes = [UInt8](repeating: byte, count: clusters * Int(clusterSize))
      try await node.write(at: offset, bytes: bytes, flags: .writeCompressed)
    case .zero(let offset, let count, let unmap):
      try await node.writeZeroes(at: offset, count: count, flags: unmap ? .mayUnmap : [])
    case .discard(let offset, let count):
      try await node.discard(at: offset, count: count)
    case .grow(let size):
      try await node.truncate(to: size)
    }
  }

  /// The guest bytes the request changes, and what it writes there (nil for
  /// a change of length).
  func effect(clusterSize: Int64) -> (range: Range<Int>, byte: UInt8)? {
    switch self {
    case .write(let offset, let count, let byte): (Int(offset)..<Int(offset) + count, byte)
    case .compressed(let offset, let clusters, let byte):
      (Int(offset)..<Int(offset) + clusters * Int(clusterSize), byte)
    case .zero(let offset, let count, _), .discard(let offset, let count):
      (Int(offset)..<Int(offset + count), 0)
    case .grow: nil
    }
  }
}

/// A sequence of guest requests on a new image, each followed by a guest
/// flush, that exercises one part of the qcow2 metadata engine.
struct WriteLogWorkload: Sendable, CustomStringConvertible {
  var name: String
  var clusterSize: Int64
  var refcountBits = 16
  var size: Int64
  var ops: [LoggedOp]

  var description: String { name }

  /// The largest guest length the workload reaches.
  var maxSize: Int64 {
    ops.reduce(size) { if case .grow(let new) = $1 { max($0, new) } else { $0 } }
  }

  static let all: [WriteLogWorkload] = [
    // 512-byte clusters: an L2 table maps 32 KiB, so writes all over the
    // disk allocate many; growing to 4 MiB outgrows the one-cluster L1.
    WriteLogWorkload(
      name: "L2 allocation and L1 growth", clusterSize: 512, size: 1 << 20,
      ops: [
        .write(0, 4096, 0x11), .write(40000, 70000, 0x12), .write(500_000, 1000, 0x13),
        .write(1_000_000, 48576, 0x14), .grow(4 << 20), .write(3_000_000, 100_000, 0x15),
        .write((4 << 20) - 512, 512, 0x16), .zero(65536, 32768, unmap: true),
        .write(2 << 20, 33000, 0x17), .discard(0, 4096),
      ]),
    // 64-bit refcounts in 512-byte clusters: a refcount block covers 32 KiB
    // and the first refcount table 2 MiB, so 2 MiB of data allocates many
    // blocks and moves the table.
    WriteLogWorkload(
      name: "refcount blocks and refcount table growth", clusterSize: 512, refcountBits: 64,
      size: 4 << 20,
      ops: [
        .write(0, 8192, 0x21), .write(1 << 20, 2 << 20, 0x22), .write(3_500_000, 4096, 0x23),
        .discard(1 << 20, 1 << 20), .write(100_000, 300_000, 0x24),
      ]),
    // Compressed clusters packed into shared host clusters, zeroed and
    // discarded, then more compressed and plain writes reusing the space.
    WriteLogWorkload(
      name: "compressed writes and discards", clusterSize: 4096, size: 4 << 20,
      ops: [
        .compressed(0, clusters: 1, 0x31), .compressed(8192, clusters: 2, 0x32),
        .compressed(65536, clusters: 4, 0x33), .zero(0, 16384, unmap: false),
        .write(200_000, 10000, 0x34), .compressed(1 << 20, clusters: 1, 0x35),
        .discard(65536, 16384), .compressed(65536, clusters: 1, 0x36),
        .write(70000, 5000, 0x37), .compressed(2 << 20, clusters: 3, 0x38),
      ]),
    // The host cluster holding the last compressed data is freed (zeroed),
    // reused whole for an L2 table, and must not receive the next
    // compressed data (QEMU 7.2 packs it there; only its overlap check
    // stops the write).
    WriteLogWorkload(
      name: "compressed cluster freed and reused", clusterSize: 4096, size: 4 << 20,
      ops: [
        .compressed(0, clusters: 1, 0x51), .zero(0, 4096, unmap: false),
        .write(1 << 20, 8192, 0x52), .compressed(2 << 20, clusters: 2, 0x53),
      ]),
    // QEMU's defaults: 64 KiB clusters, copy-on-write, zero clusters, reuse.
    WriteLogWorkload(
      name: "64 KiB clusters, mixed", clusterSize: 65536, size: 4 << 20,
      ops: [
        .write(0, 4096, 0x41), .write(100_000, 200_000, 0x42),
        .zero(1 << 20, 256 << 10, unmap: false),
        .write((1 << 20) + 4096, 4096, 0x43), .discard(65536, 65536), .write(3 << 20, 65536, 0x44),
        .zero(3 << 20, 65536, unmap: true), .write(65536, 4096, 0x45),
        .compressed(2 << 20, clusters: 2, 0x46), .write((2 << 20) + 70000, 5000, 0x47),
      ]),
  ]
}
