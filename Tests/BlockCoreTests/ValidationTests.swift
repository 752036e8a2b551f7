import BlockCore
import BlockTestSupport
import Testing

/// Request validation: each failure is an errno-style error and reaches no driver.
@Suite("Validation")
@BlockActor
struct ValidationTests {
  @Test("a negative offset fails with EIO")
  func negativeOffset() async throws {
    let (node, driver) = try await makeRecordingNode(size: 65536)
    await #expect(throws: BlockError(.ioError, "offset is negative: -1")) {
      _ = try await node.read(at: -1, count: 1)
    }
    #expect(driver.calls.isEmpty)
  }

  @Test("a read or write over 2 GiB - 512 fails with EINVAL")
  func oversizedRequest() async throws {
    let (node, driver) = try await makeRecordingNode(size: 1 << 40)
    let length = BlockNode.maxRequestBytes + 1
    let error = await #expect(throws: BlockError.self) {
      try await node.read(at: 0, into: IOVector(allocating: Int(length)))
    }
    #expect(error?.code == .invalidArgument)
    #expect(driver.calls.isEmpty)
  }

  @Test("a zero-write may exceed the 2 GiB request limit")
  func largeZeroWrite() async throws {
    var capabilities = DriverCapabilities(kind: .protocolDriver)
    capabilities.canWriteZeroes = true
    let (node, driver) = try await makeRecordingNode(size: 1 << 33, capabilities: capabilities)
    try await node.writeZeroes(at: 0, count: 1 << 32)
    let total = driver.ioCalls.reduce(Int64(0)) { sum, call in
      if case .writeZeroes(_, let length, _) = call { return sum + length }
      return sum
    }
    #expect(total == 1 << 32)
  }

  @Test("writes to a read-only node fail with EPERM")
  func readOnly() async throws {
    let (node, driver) = try await makeRecordingNode(
      size: 65536, options: NodeOptions(readOnly: true))
    for operation in [0, 1, 2] {
      let error = await #expect(throws: BlockError.self) {
        switch operation {
        case 0: try await node.write(at: 0, bytes: [1])
        case 1: try await node.writeZeroes(at: 0, count: 512)
        default: try await node.discard(at: 0, count: 512)
        }
      }
      #expect(error?.code == .notPermitted)
    }
    #expect(driver.calls.isEmpty)
    // Reads still work.
    #expect(try await node.read(at: 0, count: 4) == [0, 0, 0, 0])
  }

  @Test("I/O on a node without medium fails with ENOMEDIUM")
  func noMedium() async throws {
    let (node, driver) = try await makeRecordingNode(size: 65536)
    await node.close()
    driver.reset()
    for isWrite in [false, true] {
      let error = await #expect(throws: BlockError.self) {
        if isWrite {
          try await node.write(at: 0, bytes: [1])
        } else {
          _ = try await node.read(at: 0, count: 1)
        }
      }
      #expect(error?.code == BlockError.noMediumCode)
    }
    #expect(driver.calls.isEmpty)
  }

  @Test("the backend refuses requests past the device end with EIO; the node reads zeroes")
  func backendRange() async throws {
    let (node, driver) = try await makeRecordingNode(size: 4096)
    let backend = BlockBackend(root: node)
    for (offset, count) in [(Int64(4096), 1), (4000, 97), (-1, 1)] {
      let error = await #expect(throws: BlockError.self) {
        try await backend.read(at: offset, into: IOVector(allocating: count))
      }
      #expect(error?.code == .ioError)
      let writeError = await #expect(throws: BlockError.self) {
        try await backend.write(at: offset, from: IOVector(allocating: count))
      }
      #expect(writeError?.code == .ioError)
    }
    #expect(driver.calls.isEmpty)
    // The node itself reads zeroes past its end.
    #expect(try await node.read(at: 4096, count: 8) == [UInt8](repeating: 0, count: 8))
    // Reading exactly to the end is fine.
    try await backend.read(at: 4000, into: IOVector(allocating: 96))
  }
}
