import BlockCore
import BlockTestSupport
import Testing

/// Read padding and read-modify-write, stated as the exact driver calls.
@Suite("Alignment and read-modify-write")
@BlockActor
struct AlignmentTests {
  func node(alignment: Int64 = 4096, size: Int64 = 1 << 20) async throws -> (
    BlockNode, RecordingDriver
  ) {
    var limits = BlockLimits()
    limits.requestAlignment = alignment
    return try await makeRecordingNode(size: size, limits: limits)
  }

  @Test("a 1-byte write at 4095 reads 0..4096 once and writes 0..4096 once")
  func oneByteWrite() async throws {
    let (node, driver) = try await node()
    try await node.write(at: 4095, bytes: [0xAB])
    #expect(
      driver.ioCalls == [
        .read(offset: 0, length: 4096), .write(offset: 0, length: 4096, flags: []),
      ])
    #expect(try await node.read(at: 4094, count: 3) == [0, 0xAB, 0])
  }

  @Test("a 2-byte write at 4095 reads 0..8192 once and writes 0..8192 once")
  func twoByteWriteAcrossBlocks() async throws {
    let (node, driver) = try await node()
    try await node.write(at: 4095, bytes: [1, 2])
    #expect(
      driver.ioCalls == [
        .read(offset: 0, length: 8192), .write(offset: 0, length: 8192, flags: []),
      ])
    #expect(try await node.read(at: 4094, count: 4) == [0, 1, 2, 0])
  }

  @Test("head and tail in non-adjacent blocks are read separately")
  func separateHeadAndTail() async throws {
    let (node, driver) = try await node()
    try await node.write(at: 100, bytes: [UInt8](repeating: 7, count: 8192))
    #expect(
      driver.ioCalls == [
        .read(offset: 0, length: 4096), .read(offset: 8192, length: 4096),
        .write(offset: 0, length: 12288, flags: []),
      ])
  }

  @Test("a write with only a tail reads the tail block only")
  func tailOnly() async throws {
    let (node, driver) = try await node()
    try await node.write(at: 4096, bytes: [UInt8](repeating: 9, count: 5000))
    #expect(
      driver.ioCalls == [
        .read(offset: 8192, length: 4096), .write(offset: 4096, length: 8192, flags: []),
      ])
  }

  @Test("an aligned write reaches the driver unchanged")
  func alignedWrite() async throws {
    let (node, driver) = try await node()
    try await node.write(at: 8192, bytes: [UInt8](repeating: 1, count: 4096))
    #expect(driver.ioCalls == [.write(offset: 8192, length: 4096, flags: [])])
  }

  @Test("an unaligned read is padded to the alignment and returns only the requested bytes")
  func unalignedRead() async throws {
    let (node, driver) = try await node()
    driver.memory.populate(at: 0, bytes: (0..<8192).map { UInt8($0 % 251) })
    let data = try await node.read(at: 4000, count: 200)
    #expect(driver.ioCalls == [.read(offset: 0, length: 8192)])
    #expect(data == (4000..<4200).map { UInt8($0 % 251) })
  }

  @Test("zero-length requests never reach the driver")
  func zeroLength() async throws {
    let (node, driver) = try await node()
    try await node.write(at: 17, bytes: [])
    _ = try await node.read(at: 5, count: 0)
    try await node.writeZeroes(at: 3, count: 0)
    #expect(driver.calls.isEmpty)
  }

  @Test("unaligned data in the RMW head and tail is preserved")
  func preservesNeighbours() async throws {
    let (node, driver) = try await node(alignment: 512)
    driver.memory.populate(at: 0, bytes: [UInt8](repeating: 0xEE, count: 2048))
    try await node.write(at: 510, bytes: [1, 2, 3, 4])
    let data = try await node.read(at: 508, count: 8)
    #expect(data == [0xEE, 0xEE, 1, 2, 3, 4, 0xEE, 0xEE])
  }
}
