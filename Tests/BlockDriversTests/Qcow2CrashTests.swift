import BlockCore
import Foundation
import Testing

@testable import BlockDrivers

/// A disk with a volatile write cache: writes are pending until a flush
/// makes them durable; a crash keeps any subset of the pending writes.
@BlockActor
final class VolatileCacheDisk: BlockDriver {
  private(set) var durable: [UInt8]
  private var pending: [(offset: Int, bytes: [UInt8])] = []

  init(_ bytes: [UInt8]) { durable = bytes }

  nonisolated var formatName: String { "volatile-cache" }
  var capabilities: DriverCapabilities { DriverCapabilities(kind: .protocolDriver) }

  /// The disk as a reader sees it: durable bytes with pending writes on top.
  var current: [UInt8] { apply(pending) }

  func length(_ node: BlockNode) async throws -> Int64 { Int64(current.count) }

  func read(
    _ node: BlockNode, offset: Int64, length: Int64, into iov: IOVector, flags: RequestFlags
  ) async throws {
    var bytes = current
    if bytes.count < Int(offset + length) {
      bytes += [UInt8](repeating: 0, count: Int(offset + length) - bytes.count)
    }
    bytes[Int(offset)..<Int(offset + length)].withUnsafeBytes { iov.copyIn($0) }
  }

  func write(
    _ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector, flags: RequestFlags
  ) async throws {
    pending.append((Int(offset), iov.toArray()))
  }

  func flushToDisk(_ node: BlockNode) async throws {
    durable = current
    pending = []
  }

  /// What survives a crash that kept the pending writes `keep` selects.
  func afterCrash(keep: (Int) -> Bool) -> [UInt8] {
    apply(pending.enumerated().filter { keep($0.offset) }.map(\.element))
  }

  private func apply(_ writes: [(offset: Int, bytes: [UInt8])]) -> [UInt8] {
    var bytes = durable
    for write in writes {
      if bytes.count < write.offset + write.bytes.count {
        bytes += [UInt8](repeating: 0, count: write.offset + write.bytes.count - bytes.count)
      }
      bytes.replaceSubrange(write.offset..<write.offset + write.bytes.count, with: write.bytes)
    }
    return bytes
  }
}

/// Crashes after every request, keeping various subsets of the writes not yet
/// flushed: `qemu-img check` must find at worst leaked clusters.
@Suite(
  "qcow2 crash consistency",
  .enabled(if: QEMUTools.hasQemuImg, "qemu-img is not installed"))
@BlockActor
struct Qcow2CrashTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  @Test(
    "a crash at any point leaves at worst leaks",
    arguments: [(Int64(512), 16), (65536, 16), (512, 64)])
  func crashes(clusterSize: Int64, refcountBits: Int) async throws {
    var options = Qcow2CreateOptions(size: 4 << 20)
    options.clusterSize = clusterSize
    options.refcountBits = refcountBits
    let disk = VolatileCacheDisk(try Qcow2Create.layout(options))
    let file = BlockNode(name: "volatile", driver: disk)
    try await file.open()
    let node = try await Qcow2Driver.open(
      over: file, imagePath: nil, context: OpenContext(node: NodeOptions(discard: .unmap)))
    var random = SystemRandomNumberGenerator()
    let path = scratch.file("crashed.qcow2")
    // The last request outgrows a 512-byte cluster image's refcount table
    // when refcounts are 64 bits wide.
    let ops = GuestOp.mixed + [.write(1 << 20, 2 << 20, 0x5a)]
    for (step, op) in ops.enumerated() {
      try await op.apply(to: node)
      let seed = UInt64.random(in: 0...UInt64.max, using: &random)
      let survivors: [(String, (Int) -> Bool)] = [
        ("none", { _ in false }), ("all", { _ in true }), ("odd", { $0 % 2 == 1 }),
        ("random \(seed)", { ($0 &* 2_654_435_761 ^ Int(truncatingIfNeeded: seed)) & 4 != 0 }),
      ]
      for (name, keep) in survivors {
        try Data(disk.afterCrash(keep: keep)).write(to: URL(fileURLWithPath: path))
        let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", path])
        // 0: clean, 3: leaked clusters only; 2 would be corruption.
        #expect(
          check.status == 0 || check.status == 3,
          "after step \(step) (\(op)), keeping \(name) of the unflushed writes: \(check.output)")
      }
    }
    if refcountBits == 64 {
      let header = try Qcow2Header.parse(disk.current, fileLength: Int64(disk.current.count))
      #expect(header.refcountTableOffset != UInt64(clusterSize), "the refcount table grew")
    }
  }
}
