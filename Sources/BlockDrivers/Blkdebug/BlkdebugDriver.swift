import BlockCore
import BlockLoop
import SystemPackage

/// QEMU's `blkdebug` filter (block/blkdebug.c, QEMU 7.2): passes every request
/// to its `image` child (the node's file child) and, driven by rules, fails
/// requests with chosen errnos, moves between states on debug events, and
/// suspends requests at breakpoints.
///
/// Error injection happens in two steps: a debug event activates the
/// inject-error rules for it (see ``BlkdebugRuleSet``), then a read, write,
/// zero-write, discard, flush or block-status request that an active rule
/// covers fails without reaching the child. Limits options (`align`,
/// `max-transfer`, `opt-write-zero`, `max-write-zero`, `opt-discard`,
/// `max-discard`) override the node's limits so the engine's alignment and
/// fragmentation paths can be exercised.
@BlockActor
public final class BlkdebugDriver: BlockDriver {
  /// Limit overrides; 0 leaves a limit as merged from the child.
  public struct LimitOverrides: Sendable, Equatable {
    public var align: Int64 = 0
    public var maxTransfer: Int64 = 0
    public var optWriteZero: Int64 = 0
    public var maxWriteZero: Int64 = 0
    public var optDiscard: Int64 = 0
    public var maxDiscard: Int64 = 0

    public init() {}
  }

  /// The rules and the current state.
  public var rules: BlkdebugRuleSet
  /// The limit overrides.
  public let overrides: LimitOverrides
  /// The configuration file the rules came from, if any.
  public let configFile: String?
  private let fileCapabilities: DriverCapabilities
  var suspended: [SuspendedRequest] = []
  var suspensionWaiters: [(tag: String, waiter: ContextWaiter)] = []
  /// Receives blkdebug's messages about breakpoints (QEMU prints them on
  /// standard output): `blkdebug: Suspended request 'TAG'` and
  /// `blkdebug: Resuming request 'TAG'`, each with a newline.
  public var messageHandler: (@BlockActor (String) -> Void)?

  /// Creates a driver over a child with the given capabilities.
  public init(
    rules: [BlkdebugRule] = [], overrides: LimitOverrides = LimitOverrides(),
    configFile: String? = nil, fileCapabilities: DriverCapabilities
  ) {
    self.rules = BlkdebugRuleSet(rules)
    self.overrides = overrides
    self.configFile = configFile
    self.fileCapabilities = fileCapabilities
  }

  public nonisolated var formatName: String { "blkdebug" }

  /// A filter that handles debug events, passing the child's FUA and
  /// zero-write flags through.
  public var capabilities: DriverCapabilities {
    var capabilities = DriverCapabilities(kind: .filter)
    capabilities.hasBlockStatus = true
    capabilities.canWriteZeroes = true
    capabilities.handlesDebugEvents = true
    capabilities.supportedWriteFlags = fileCapabilities.supportedWriteFlags.intersection(.fua)
    capabilities.supportedZeroFlags = fileCapabilities.supportedZeroFlags.intersection([
      .fua, .mayUnmap, .noFallback,
    ])
    return capabilities
  }

  public func refreshLimits(_ limits: inout BlockLimits, node: BlockNode) {
    if overrides.align != 0 { limits.requestAlignment = overrides.align }
    if overrides.maxTransfer != 0 { limits.maxTransfer = overrides.maxTransfer }
    if overrides.optWriteZero != 0 { limits.pwriteZeroesAlignment = overrides.optWriteZero }
    if overrides.maxWriteZero != 0 { limits.maxPwriteZeroes = overrides.maxWriteZero }
    if overrides.optDiscard != 0 { limits.pdiscardAlignment = overrides.optDiscard }
    if overrides.maxDiscard != 0 { limits.maxPdiscard = overrides.maxDiscard }
  }

  /// QEMU's `blkdebug_reopen_prepare`: the rules and limits cannot change
  /// (their options must keep their values).
  public func prepareReopen(_ node: BlockNode, _ request: inout BlockReopenRequest) async throws
    -> any BlockReopenChange
  { UnchangedReopen() }

  public func length(_ node: BlockNode) async throws -> Int64 {
    try file(of: node).length
  }

  /// Fails the request when an active inject-error rule covers it (QEMU's
  /// `rule_check`). Unless the rule says `immediately`, the request yields
  /// once before failing, as QEMU reschedules its coroutine.
  func check(offset: Int64, bytes: Int64, type: BlkdebugIOType) async throws {
    guard let inject = rules.check(offset: offset, bytes: bytes, type: type) else { return }
    if !inject.immediately { await Task.yield() }
    throw BlockError(Errno(rawValue: inject.errno))
  }

  public func read(
    _ node: BlockNode, offset: Int64, length: Int64, into iov: IOVector, flags: RequestFlags
  ) async throws {
    try await check(offset: offset, bytes: length, type: .read)
    try await file(of: node).read(at: offset, into: iov, flags: flags)
  }

  public func write(
    _ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector, flags: RequestFlags
  ) async throws {
    try await check(offset: offset, bytes: length, type: .write)
    try await file(of: node).write(at: offset, from: iov, flags: flags)
  }

  /// Refuses (ENOTSUP) zero-writes smaller than the zero-write alignment, so
  /// that the engine's fallback to writing zeroes is exercised, as QEMU does.
  public func writeZeroes(_ node: BlockNode, offset: Int64, length: Int64, flags: RequestFlags)
    async throws
  {
    let align = max(node.limits.requestAlignment, node.limits.pwriteZeroesAlignment)
    if length < align { throw BlockError.notSupported() }
    try await check(offset: offset, bytes: length, type: .writeZeroes)
    try await file(of: node).writeZeroes(at: offset, count: length, flags: flags)
  }

  /// Refuses (ENOTSUP, which the engine treats as success) discards smaller
  /// than the request alignment, as QEMU does.
  public func discard(_ node: BlockNode, offset: Int64, length: Int64) async throws {
    if length < node.limits.requestAlignment { throw BlockError.notSupported() }
    try await check(offset: offset, bytes: length, type: .discard)
    try await file(of: node).discard(at: offset, count: length)
  }

  /// Checks the flush rules; the engine then flushes the child.
  public func flushToDisk(_ node: BlockNode) async throws {
    try await check(offset: 0, bytes: 0, type: .flush)
  }

  /// The child's status (RAW), after the block-status rules.
  public func blockStatus(_ node: BlockNode, wantZero: Bool, offset: Int64, length: Int64)
    async throws -> BlockStatus
  {
    try await check(offset: offset, bytes: length, type: .blockStatus)
    return BlockStatus(
      flags: [.raw, .offsetValid], count: length, mapOffset: offset, file: try file(of: node))
  }

  /// Filters resize their child (QEMU's `bdrv_co_truncate` for filters).
  public func truncate(
    _ node: BlockNode, to length: Int64, exact: Bool, preallocation: PreallocationMode
  ) async throws {
    try await file(of: node).truncate(to: length, exact: exact, preallocation: preallocation)
  }

  /// Processes the event's rules, then suspends the request at each
  /// breakpoint it hit until ``resume(tag:)`` (QEMU's `blkdebug_debug_event`).
  public func debugEvent(_ node: BlockNode, _ event: BlockDebugEvent) async throws {
    let tags = rules.process(event)
    if !tags.isEmpty { await suspend(tags: tags) }
  }

  private func file(of node: BlockNode) throws -> BlockNode {
    guard let file = node.file else { throw BlockError(BlockError.noMediumCode) }
    return file
  }
}
