import BlockCore
import BlockTestSupport
import Testing

/// End-of-file handling, maxTransfer fragmentation, FUA and growth.
@Suite("Fragmentation, EOF, FUA and growth")
@BlockActor
struct FragmentationTests {
  @Test("a 64 MiB FUA write with maxTransfer 1 MiB on a driver without FUA: 64 writes, one flush")
  func fragmentedFUA() async throws {
    var limits = BlockLimits()
    limits.maxTransfer = 1 << 20
    let (node, driver) = try await makeRecordingNode(size: 128 << 20, limits: limits)
    try await node.write(at: 0, from: IOVector(allocating: 64 << 20), flags: .fua)
    let expected: [DriverCall] =
      (0..<64).map { .write(offset: Int64($0) << 20, length: 1 << 20, flags: []) } + [
        .flushToOS, .flushToDisk,
      ]
    #expect(driver.ioCalls == expected)
  }

  @Test("FUA is passed down to a driver that supports it, with no flush")
  func nativeFUA() async throws {
    var limits = BlockLimits()
    limits.maxTransfer = 1 << 20
    var capabilities = DriverCapabilities(kind: .protocolDriver)
    capabilities.supportedWriteFlags = .fua
    let (node, driver) = try await makeRecordingNode(
      size: 8 << 20, capabilities: capabilities, limits: limits)
    try await node.write(at: 0, from: IOVector(allocating: 2 << 20), flags: .fua)
    #expect(
      driver.ioCalls == [
        .write(offset: 0, length: 1 << 20, flags: .fua),
        .write(offset: 1 << 20, length: 1 << 20, flags: .fua),
      ])
  }

  @Test("flags a driver does not declare never reach it")
  func undeclaredFlags() async throws {
    let (node, driver) = try await makeRecordingNode(size: 65536)
    try await node.write(at: 0, bytes: [1, 2], flags: [.writeUnchanged])
    #expect(driver.ioCalls == [.write(offset: 0, length: 2, flags: [])])
  }

  @Test("a read that ends past EOF reads up to the aligned end and zero-fills the rest")
  func readPastEOF() async throws {
    var limits = BlockLimits()
    limits.requestAlignment = 512
    let (node, driver) = try await makeRecordingNode(size: 1000, limits: limits)
    driver.memory.populate(at: 0, bytes: [UInt8](repeating: 0x5A, count: 1000))
    let data = try await node.read(at: 0, count: 4096)
    #expect(driver.ioCalls == [.read(offset: 0, length: 1024)])
    #expect(data[0..<1000].allSatisfy { $0 == 0x5A })
    #expect(data[1024...].allSatisfy { $0 == 0 })
  }

  @Test("a read entirely past EOF reaches no driver")
  func readBeyondEOF() async throws {
    let (node, driver) = try await makeRecordingNode(size: 4096)
    let data = try await node.read(at: 8192, count: 100)
    #expect(driver.ioCalls.isEmpty)
    #expect(data == [UInt8](repeating: 0, count: 100))
  }

  @Test("a large read is fragmented at maxTransfer")
  func fragmentedRead() async throws {
    var limits = BlockLimits()
    limits.maxTransfer = 4096
    let (node, driver) = try await makeRecordingNode(size: 65536, limits: limits)
    _ = try await node.read(at: 0, count: 10000)
    #expect(
      driver.ioCalls == [
        .read(offset: 0, length: 4096), .read(offset: 4096, length: 4096),
        .read(offset: 8192, length: 1808),
      ])
  }

  @Test("writes past the end grow the node; generation and highest offset are kept")
  func growth() async throws {
    let (node, _) = try await makeRecordingNode(size: 4096)
    #expect(node.writeGeneration == 0)
    try await node.write(at: 10000, bytes: [1, 2, 3])
    #expect(node.length == 10240)  // whole sectors, as QEMU's total_sectors
    #expect(node.highestOffsetWritten == 10003)
    #expect(node.writeGeneration == 1)
    try await node.write(at: 0, bytes: [9])
    #expect(node.length == 10240)
    #expect(node.highestOffsetWritten == 10003)
    #expect(node.writeGeneration == 2)
    #expect(try await node.read(at: 10000, count: 3) == [1, 2, 3])
  }
}
