import BlockCore
import BlockTestSupport
import Testing

/// Tracked requests and serialisation, driven deterministically with a Gate.
@Suite("Tracked and serialising requests")
@BlockActor
struct SerialisationTests {
  /// A node with 4 KiB alignment whose first driver read is held by `gate`.
  func heldNode(_ gate: Gate) async throws -> (BlockNode, RecordingDriver) {
    var limits = BlockLimits()
    limits.requestAlignment = 4096
    let (node, driver) = try await makeRecordingNode(size: 1 << 20, limits: limits)
    var holdNext = true
    driver.interceptor = { call in
      if case .read = call, holdNext {
        holdNext = false
        await gate.hold()
      }
    }
    return (node, driver)
  }

  /// Suspends until `node` has `count` waiting requests. Condition-driven, not timed.
  func waitUntilWaiting(_ node: BlockNode, _ count: Int) async {
    while node.waitingRequestCount < count { await Task.yield() }
  }

  @Test("an overlapping read waits for a read-modify-write in progress")
  func readWaitsForRMW() async throws {
    let gate = Gate()
    let (node, driver) = try await heldNode(gate)
    let writer = Task { try await node.write(at: 10, bytes: [7, 7]) }
    await gate.waitForHeld(1)
    let reader = Task { try await node.read(at: 0, count: 4096) }
    await waitUntilWaiting(node, 1)
    #expect(driver.ioCalls == [.read(offset: 0, length: 4096)])
    gate.releaseAll()
    try await writer.value
    let data = try await reader.value
    #expect(data[10] == 7 && data[11] == 7)
    #expect(
      driver.ioCalls == [
        .read(offset: 0, length: 4096), .write(offset: 0, length: 4096, flags: []),
        .read(offset: 0, length: 4096),
      ])
  }

  @Test("a non-overlapping request does not wait for a serialising one")
  func disjointDoesNotWait() async throws {
    let gate = Gate()
    let (node, driver) = try await heldNode(gate)
    let writer = Task { try await node.write(at: 10, bytes: [7]) }
    await gate.waitForHeld(1)
    try await node.write(at: 8192, bytes: [UInt8](repeating: 1, count: 4096))
    #expect(
      driver.ioCalls == [
        .read(offset: 0, length: 4096), .write(offset: 8192, length: 4096, flags: []),
      ])
    gate.releaseAll()
    try await writer.value
  }

  @Test("two overlapping read-modify-writes complete without deadlock, in one serial order")
  func noDeadlock() async throws {
    let gate = Gate()
    let (node, driver) = try await heldNode(gate)
    let first = Task { try await node.write(at: 100, bytes: [1, 1, 1, 1]) }
    await gate.waitForHeld(1)
    let second = Task { try await node.write(at: 102, bytes: [2, 2, 2, 2]) }
    await waitUntilWaiting(node, 1)
    gate.releaseAll()
    try await first.value
    try await second.value
    #expect(try await node.read(at: 100, count: 6) == [1, 1, 2, 2, 2, 2])
    #expect(
      driver.ioCalls == [
        .read(offset: 0, length: 4096), .write(offset: 0, length: 4096, flags: []),
        .read(offset: 0, length: 4096), .write(offset: 0, length: 4096, flags: []),
        .read(offset: 0, length: 4096),
      ])
  }

  @Test("an aligned write overlapping a serialising request waits for it")
  func alignedWriteWaits() async throws {
    let gate = Gate()
    let (node, _) = try await heldNode(gate)
    let rmw = Task { try await node.write(at: 5, bytes: [9]) }
    await gate.waitForHeld(1)
    let aligned = Task { try await node.write(at: 0, bytes: [UInt8](repeating: 3, count: 4096)) }
    await waitUntilWaiting(node, 1)
    gate.releaseAll()
    try await rmw.value
    try await aligned.value
    // The aligned write ran after the RMW, so it wins everywhere.
    #expect(try await node.read(at: 0, count: 8) == [UInt8](repeating: 3, count: 8))
  }
}
