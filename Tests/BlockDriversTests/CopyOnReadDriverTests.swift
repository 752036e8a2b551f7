import BlockCore
import Testing

@testable import BlockDrivers

/// The copy-on-read filter: reads through it copy data from the child's
/// backing chain into the child; everything else passes through.
@Suite("copy-on-read filter")
@BlockActor
struct CopyOnReadDriverTests {
  /// A memory node of 1 MiB (64 KiB clusters) over a backing memory node
  /// holding 0x5a at 64 KiB.
  func makeChain() async throws -> (top: BlockNode, topDriver: MemoryDriver) {
    let base = MemoryDriver(size: 1 << 20)
    base.populate(at: 65536, bytes: [UInt8](repeating: 0x5a, count: 65536))
    let baseNode = BlockNode(name: "base", driver: base)
    try await baseNode.open()
    let topDriver = MemoryDriver(size: 1 << 20, clusterSize: 65536)
    let top = BlockNode(name: "top", driver: topDriver)
    top.attach(baseNode, role: .backing)
    try await top.open()
    return (top, topDriver)
  }

  @Test("reads through the filter copy backing data up into the child, whole clusters")
  func copiesUp() async throws {
    let (top, topDriver) = try await makeChain()
    // Reading the child directly copies nothing.
    #expect(try await top.read(at: 65536, count: 512) == [UInt8](repeating: 0x5a, count: 512))
    #expect(topDriver.dataRanges.lookup(65536, limit: 65536).0 == false)

    let filter = BlockNode(
      name: "cor", driver: CopyOnReadDriver(fileCapabilities: top.capabilities))
    filter.attach(top, role: .file)
    try await filter.open()
    #expect(filter.driver.formatName == "copy-on-read")
    #expect(filter.length == top.length)
    #expect(
      try await filter.read(at: 65536 + 100, count: 10) == [UInt8](repeating: 0x5a, count: 10))
    let (allocated, count) = topDriver.dataRanges.lookup(65536, limit: 65536)
    #expect(allocated && count == 65536)
    #expect(filter.copyOnReadCount == 0)
    #expect(top.copyOnReadCount == 0)
  }

  @Test("writes, zero-writes, discards and block status pass through")
  func passThrough() async throws {
    let node = try await ImageOpener.open(
      filename: nil,
      options: try DriverOptions.parse("driver=copy-on-read,file.driver=memory,file.size=1M"),
      context: OpenContext(node: NodeOptions(discard: .unmap)))
    #expect(node.driver.formatName == "copy-on-read")
    #expect(node.file?.driver.formatName == "memory")
    try await node.write(at: 0, bytes: [1, 2, 3, 4])
    #expect(try await node.file!.read(at: 0, count: 4) == [1, 2, 3, 4])
    try await node.writeZeroes(at: 0, count: 2)
    #expect(try await node.read(at: 0, count: 4) == [0, 0, 3, 4])
    let status = try await node.blockStatus(offset: 0, bytes: 4096, wantZero: true)
    #expect(status.flags.contains(.allocated))
    await node.close()
  }
}
