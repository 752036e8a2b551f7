import BlockCore
import Foundation
import Testing

@testable import BlockDrivers

/// Inputs the libFuzzer targets (Fuzz/) found, as unit tests: each failed
/// (crashed) before its fix.
@Suite("qcow2 fuzz findings")
@BlockActor
struct Qcow2FuzzFindingTests {
  /// A fresh 512 KiB image with 4 KiB clusters, as qemu-img lays it out:
  /// header, refcount table, refcount block, L1 table.
  static func image() -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: 4 << 10 * 4)
    func put(_ value: UInt64, at offset: Int, width: Int) {
      for index in 0..<width {
        bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(width - 1 - index)))
      }
    }
    put(0x5146_49fb, at: 0, width: 4)  // magic
    put(3, at: 4, width: 4)  // version
    put(12, at: 20, width: 4)  // cluster bits
    put(512 << 10, at: 24, width: 8)  // size
    put(1, at: 36, width: 4)  // L1 size
    put(0x3000, at: 40, width: 8)  // L1 table
    put(0x1000, at: 48, width: 8)  // refcount table
    put(1, at: 56, width: 4)  // refcount table clusters
    put(4, at: 96, width: 4)  // refcount order
    put(104, at: 100, width: 4)  // header length
    put(0x2000, at: 0x1000, width: 8)  // refcount block 0
    for cluster in 0..<4 { put(1, at: 0x2000 + 2 * cluster, width: 2) }
    return bytes
  }

  /// Opens `bytes` as a qcow2 image over a memory disk for a check.
  static func openForCheck(_ bytes: [UInt8]) async throws -> BlockNode {
    let memory = MemoryDriver(size: Int64(bytes.count))
    memory.populate(at: 0, bytes: bytes)
    let file = BlockNode(name: "file", driver: memory)
    try await file.open()
    var context = OpenContext(node: NodeOptions(readOnly: false))
    context.forCheck = true
    context.openBacking = false
    return try await Qcow2Driver.open(over: file, imagePath: nil, context: context)
  }

  @Test("the clean image checks clean")
  func cleanImage() async throws {
    let node = try await Self.openForCheck(Self.image())
    let result = try await (node.driver as! Qcow2Driver).check(node)
    await node.close()
    #expect(result.corruptions == 0 && result.leaks == 0 && result.checkErrors == 0)
  }

  /// A refcount table entry naming a refcount block 80 TiB past the end of
  /// the file: `check -r all` grows the file to cover it, as QEMU does, and
  /// then needed 40 GB to count that many clusters' references (the process
  /// died). Like QEMU when that allocation fails, the check now fails with
  /// ENOMEM.
  @Test("check -r all: a refcount block far past the end of the file")
  func refcountBlockFarPastTheEnd() async throws {
    var bytes = Self.image()
    for (index, byte) in [0x00, 0x00, 0x50, 0x00, 0x00, 0x00, 0x00, 0x00].enumerated() {
      bytes[0x1000 + 8 + index] = UInt8(byte)
    }
    let node = try await Self.openForCheck(bytes)
    let driver = try #require(node.driver as? Qcow2Driver)
    let readOnlyCheck = try await driver.check(node)
    #expect(readOnlyCheck.messages.contains("ERROR refcount block 1 is outside image"))
    let repair = try await driver.check(node, mode: [.fixLeaks, .fixErrors])
    await node.close()
    #expect(repair.failure?.code == .noMemory, "\(repair)")
    #expect(repair.checkErrors == 1)
  }
}
