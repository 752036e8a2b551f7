/// Per-backend request counters (QEMU's `BlockAcctStats`, the parts tools print).
public struct BackendStats: Sendable, Equatable {
  public var readOps = 0
  public var readBytes: Int64 = 0
  public var writeOps = 0
  public var writeBytes: Int64 = 0
  public var flushOps = 0
  public var discardOps = 0
  public var failedOps = 0
}

/// A user's handle on a root node (QEMU's `BlockBackend`).
///
/// The backend checks ranges as a device would: a request that reaches past the
/// root's length fails with EIO (nodes below accept it, reading zeroes or
/// growing). It adds FUA to writes when the user sees no write cache
/// (writethrough), holds new requests while the graph is drained, and counts
/// statistics.
@BlockActor
public final class BlockBackend: BlockParent {
  /// The root node.
  public let root: BlockNode
  /// Whether writes may reach past the end (image creation, growing formats).
  public var allowWriteBeyondEOF = false
  /// Whether the user sees a write cache; when false every write carries FUA.
  public var writeCacheEnabled: Bool
  /// Counters.
  public private(set) var stats = BackendStats()
  private var quiesceCounter = 0
  private let quiesceWaiters = BlockWaitQueue()
  private var inFlight = 0

  /// Attaches a backend to a root node.
  public init(root: BlockNode) {
    self.root = root
    writeCacheEnabled = root.options.cache.writeCacheEnabled
    root.parents.append(WeakParent(self))
    if root.quiesceCounter > 0 { quiesceCounter = 1 }
  }

  public func childDrainedBegin() { quiesceCounter += 1 }

  public func childDrainedEnd() {
    quiesceCounter -= 1
    if quiesceCounter == 0 {
      quiesceWaiters.wakeAll()
    }
  }

  public var hasRequestsInFlight: Bool { inFlight > 0 }

  /// The device's length in bytes.
  public var length: Int64 { root.length }

  /// Waits while the graph is drained, then counts the request as in flight.
  @inline(__always)
  private func request<T>(_ body: @BlockActor () async throws -> T) async throws -> T {
    if quiesceCounter > 0 { await waitWhileQuiesced() }
    inFlight += 1
    defer { inFlight -= 1 }
    do {
      return try await body()
    } catch {
      stats.failedOps += 1
      throw error
    }
  }

  private func waitWhileQuiesced() async {
    while quiesceCounter > 0 {
      await quiesceWaiters.wait()
    }
  }

  /// QEMU's `blk_check_byte_request`.
  private func check(_ offset: Int64, _ bytes: Int64, isWrite: Bool = false) throws {
    if bytes < 0 { throw BlockError(.ioError, context: root.name) }
    try root.checkInserted()
    if offset < 0 { throw BlockError(.ioError, context: root.name) }
    if !(isWrite && allowWriteBeyondEOF) {
      let length = root.length
      if offset > length || length - offset < bytes {
        throw BlockError(.ioError, context: root.name)
      }
    }
  }

  /// Reads `iov.count` bytes at `offset`.
  public func read(at offset: Int64, into iov: IOVector, flags: RequestFlags = []) async throws {
    try check(offset, Int64(iov.count))
    try await request { try await root.read(at: offset, into: iov, flags: flags) }
    stats.readOps += 1
    stats.readBytes += Int64(iov.count)
  }

  /// Writes `iov` at `offset`.
  public func write(at offset: Int64, from iov: IOVector, flags: RequestFlags = []) async throws {
    try check(offset, Int64(iov.count), isWrite: true)
    var flags = flags
    if !writeCacheEnabled { flags.insert(.fua) }
    try await request { try await root.write(at: offset, from: iov, flags: flags) }
    stats.writeOps += 1
    stats.writeBytes += Int64(iov.count)
  }

  /// Makes `count` bytes at `offset` read as zeroes.
  public func writeZeroes(at offset: Int64, count: Int64, flags: RequestFlags = []) async throws {
    try check(offset, count, isWrite: true)
    var flags = flags
    if !writeCacheEnabled { flags.insert(.fua) }
    try await request { try await root.writeZeroes(at: offset, count: count, flags: flags) }
    stats.writeOps += 1
    stats.writeBytes += count
  }

  /// Writes compressed data.
  public func writeCompressed(at offset: Int64, from iov: IOVector) async throws {
    try check(offset, Int64(iov.count), isWrite: true)
    try await request { try await root.writeCompressed(at: offset, from: iov) }
    stats.writeOps += 1
    stats.writeBytes += Int64(iov.count)
  }

  /// Discards a range.
  public func discard(at offset: Int64, count: Int64) async throws {
    try check(offset, count)
    try await request { try await root.discard(at: offset, count: count) }
    stats.discardOps += 1
  }

  /// Flushes the graph.
  public func flush() async throws {
    try root.checkInserted()
    try await request { try await root.flush() }
    stats.flushOps += 1
  }

  /// Resizes the device.
  public func truncate(
    to length: Int64, exact: Bool = true, preallocation: PreallocationMode = .off
  ) async throws {
    try await request {
      try await root.truncate(to: length, exact: exact, preallocation: preallocation)
    }
  }

  /// Allocation status through the whole chain.
  public func blockStatus(offset: Int64, bytes: Int64, wantZero: Bool = true) async throws
    -> (status: BlockStatus, depth: Int)
  {
    try await request {
      try await root.blockStatusAbove(base: nil, offset: offset, bytes: bytes, wantZero: wantZero)
    }
  }

  /// Reads or writes the VM state area.
  public func vmstate(at offset: Int64, iov: IOVector, isLoad: Bool) async throws {
    try await request { try await root.vmstate(at: offset, iov: iov, isLoad: isLoad) }
  }

  /// Detaches from the root without closing it (QEMU's `blk_remove_bs`),
  /// so that another node may take the root as a child; the backend must
  /// not be used afterwards.
  public func detachRoot() {
    root.parents.removeAll { $0.parent === self || $0.parent == nil }
  }

  /// Detaches from the root and closes the graph.
  public func close() async {
    root.parents.removeAll { $0.parent === self || $0.parent == nil }
    await root.close()
  }
}
