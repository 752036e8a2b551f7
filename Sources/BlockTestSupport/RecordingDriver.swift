import BlockCore
import BlockDrivers

/// One call the engine made to a driver, as a recording driver saw it.
public enum DriverCall: Equatable, Sendable, CustomStringConvertible {
  case read(offset: Int64, length: Int64)
  case write(offset: Int64, length: Int64, flags: RequestFlags)
  case writeZeroes(offset: Int64, length: Int64, flags: RequestFlags)
  case discard(offset: Int64, length: Int64)
  case flushToOS
  case flushToDisk
  case blockStatus(offset: Int64, length: Int64)
  case truncate(length: Int64)
  case writeCompressed(offset: Int64, length: Int64)

  public var description: String {
    switch self {
    case .read(let o, let l): "read(\(o), \(l))"
    case .write(let o, let l, let f): "write(\(o), \(l), \(f))"
    case .writeZeroes(let o, let l, let f): "writeZeroes(\(o), \(l), \(f))"
    case .discard(let o, let l): "discard(\(o), \(l))"
    case .flushToOS: "flushToOS"
    case .flushToDisk: "flushToDisk"
    case .blockStatus(let o, let l): "blockStatus(\(o), \(l))"
    case .truncate(let l): "truncate(\(l))"
    case .writeCompressed(let o, let l): "writeCompressed(\(o), \(l))"
    }
  }
}

/// A driver for engine tests: it records every call, stores data in memory
/// (with an allocation map and an optional backing node, like
/// ``MemoryDriver``), and lets each test choose its limits and capabilities,
/// fail calls, and suspend calls until the test releases them.
@BlockActor
public final class RecordingDriver: BlockDriver {
  /// Every call, in order.
  public private(set) var calls: [DriverCall] = []
  /// Capabilities reported to the engine.
  public var capabilities: DriverCapabilities
  /// Limits applied on refresh (merged child limits are replaced field by field
  /// where this sets a non-default value).
  public var limits: BlockLimits
  /// The storage and allocation map.
  public let memory: MemoryDriver
  /// Called before each call is carried out; may throw to fail it or suspend to
  /// hold it (see ``Gate``).
  public var interceptor: (@BlockActor (DriverCall) async throws -> Void)?
  /// Cluster size reported for copy-on-read.
  public var cluster: Int64?

  /// Creates a recording driver over an in-memory disk of `size` bytes,
  /// stored in pages of `pageSize` bytes (zero-writes and discards visit
  /// every page of their range: large disks want large pages).
  public init(
    size: Int64, capabilities: DriverCapabilities? = nil, limits: BlockLimits = BlockLimits(),
    clusterSize: Int64? = nil, pageSize: Int64 = 4096
  ) {
    memory = MemoryDriver(size: size, pageSize: pageSize)
    var defaults = DriverCapabilities(kind: .protocolDriver)
    defaults.hasBlockStatus = true
    defaults.supportsBacking = true
    self.capabilities = capabilities ?? defaults
    self.limits = limits
    self.cluster = clusterSize
  }

  public nonisolated var formatName: String { "recording" }

  /// Forgets the calls recorded so far.
  public func reset() { calls = [] }

  /// Calls other than block-status queries (the engine's own lookups).
  public var ioCalls: [DriverCall] {
    calls.filter { if case .blockStatus = $0 { false } else { true } }
  }

  private func record(_ call: DriverCall) async throws {
    calls.append(call)
    if let interceptor { try await interceptor(call) }
  }

  public func refreshLimits(_ merged: inout BlockLimits, node: BlockNode) {
    let defaults = BlockLimits()
    if limits.requestAlignment != defaults.requestAlignment {
      merged.requestAlignment = limits.requestAlignment
    }
    merged.maxTransfer = BlockLimits.minNonZero(merged.maxTransfer, limits.maxTransfer)
    if limits.optTransfer != 0 { merged.optTransfer = limits.optTransfer }
    merged.pwriteZeroesAlignment = limits.pwriteZeroesAlignment
    merged.maxPwriteZeroes = limits.maxPwriteZeroes
    merged.pdiscardAlignment = limits.pdiscardAlignment
    merged.maxPdiscard = limits.maxPdiscard
  }

  public func clusterSize(_ node: BlockNode) -> Int64? { cluster }

  public func length(_ node: BlockNode) async throws -> Int64 {
    try await memory.length(node)
  }

  public func read(
    _ node: BlockNode, offset: Int64, length: Int64, into iov: IOVector, flags: RequestFlags
  ) async throws {
    try await record(.read(offset: offset, length: length))
    try await memory.read(node, offset: offset, length: length, into: iov, flags: flags)
  }

  public func write(
    _ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector, flags: RequestFlags
  ) async throws {
    try await record(.write(offset: offset, length: length, flags: flags))
    try await memory.write(node, offset: offset, length: length, from: iov, flags: flags)
  }

  public func writeZeroes(_ node: BlockNode, offset: Int64, length: Int64, flags: RequestFlags)
    async throws
  {
    try await record(.writeZeroes(offset: offset, length: length, flags: flags))
    try await memory.writeZeroes(node, offset: offset, length: length, flags: flags)
  }

  public func discard(_ node: BlockNode, offset: Int64, length: Int64) async throws {
    try await record(.discard(offset: offset, length: length))
    try await memory.discard(node, offset: offset, length: length)
  }

  public func flushToOS(_ node: BlockNode) async throws { try await record(.flushToOS) }
  public func flushToDisk(_ node: BlockNode) async throws { try await record(.flushToDisk) }

  public func blockStatus(_ node: BlockNode, wantZero: Bool, offset: Int64, length: Int64)
    async throws -> BlockStatus
  {
    try await record(.blockStatus(offset: offset, length: length))
    return try await memory.blockStatus(node, wantZero: wantZero, offset: offset, length: length)
  }

  public func truncate(
    _ node: BlockNode, to length: Int64, exact: Bool, preallocation: PreallocationMode
  ) async throws {
    try await record(.truncate(length: length))
    try await memory.truncate(node, to: length, exact: exact, preallocation: preallocation)
  }

  public func writeCompressed(_ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector)
    async throws
  {
    try await record(.writeCompressed(offset: offset, length: length))
    try await memory.write(node, offset: offset, length: length, from: iov, flags: [])
  }
}

/// Holds calls until the test releases them: deterministic interleavings
/// without sleeps.
@BlockActor
public final class Gate {
  private var held: [CheckedContinuation<Void, Never>] = []
  private var arrivalWaiters: [(Int, CheckedContinuation<Void, Never>)] = []
  /// Number of calls currently held.
  public var heldCount: Int { held.count }

  /// Creates a gate.
  public init() {}

  /// Suspends the caller until ``releaseAll()`` or ``releaseOne()``.
  public func hold() async {
    await withCheckedContinuation { continuation in
      held.append(continuation)
      let ready = arrivalWaiters.filter { $0.0 <= held.count }
      arrivalWaiters.removeAll { $0.0 <= held.count }
      for (_, waiter) in ready { waiter.resume() }
    }
  }

  /// Waits until at least `count` calls are held.
  public func waitForHeld(_ count: Int) async {
    if held.count >= count { return }
    await withCheckedContinuation { arrivalWaiters.append((count, $0)) }
  }

  /// Releases the oldest held call.
  public func releaseOne() {
    guard !held.isEmpty else { return }
    held.removeFirst().resume()
  }

  /// Releases every held call.
  public func releaseAll() {
    let pending = held
    held = []
    for continuation in pending { continuation.resume() }
  }
}

/// Builds a node over a recording driver and opens it.
@BlockActor
public func makeRecordingNode(
  size: Int64, capabilities: DriverCapabilities? = nil, limits: BlockLimits = BlockLimits(),
  options: NodeOptions = NodeOptions(), clusterSize: Int64? = nil, backing: BlockNode? = nil,
  name: String = "recording"
) async throws -> (BlockNode, RecordingDriver) {
  let driver = RecordingDriver(
    size: size, capabilities: capabilities, limits: limits,
    clusterSize: clusterSize)
  let node = BlockNode(name: name, driver: driver, options: options)
  if let backing { node.attach(backing, role: .backing) }
  try await node.open()
  return (node, driver)
}
