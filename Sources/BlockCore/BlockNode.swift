/// A node of the block graph: one driver instance, its children and the engine's
/// bookkeeping for it (QEMU's `BlockDriverState`).
///
/// Every request enters through the node's engine methods (`read`, `write`,
/// `writeZeroes`, `discard`, `flush`, `blockStatus`, `truncate`), which
/// validate, align, serialise and fragment it before calling the driver.
@BlockActor
public final class BlockNode {
  /// The node's name (QEMU's node-name), unique enough for messages.
  public let name: String
  /// The driver behind the node.
  public let driver: any BlockDriver
  /// The driver's capabilities, read once.
  public let capabilities: DriverCapabilities
  /// Options the engine acts on.
  public internal(set) var options: NodeOptions
  /// The options the node was opened (or last reopened) with, by dotted key,
  /// without its children's (QEMU's `bs->options`): a reopen may give an
  /// option its driver cannot change only with this value.
  public var openOptions: [String: String] = [:]
  /// The node's children, in attachment order.
  public private(set) var children: [BlockChild] = []
  /// The node's limits, merged from its children and set by its driver.
  public private(set) var limits = BlockLimits()
  /// The node's length in bytes, in whole 512-byte sectors as QEMU reports it.
  public internal(set) var length: Int64 = 0
  /// Bumped after every completed write, zero-write or discard that reached a driver.
  public internal(set) var writeGeneration: UInt64 = 0
  /// The write generation the last successful flush covered.
  public internal(set) var flushedGeneration: UInt64 = 0
  /// The end of the highest range written (QEMU's `wr_highest_offset`).
  public internal(set) var highestOffsetWritten: Int64 = 0
  /// Requests in flight on this node (QEMU's `in_flight`).
  public private(set) var inFlight = 0
  /// Nesting depth of drained sections covering this node.
  public internal(set) var quiesceCounter = 0
  /// Number of users that enabled copy-on-read (the `copy-on-read` option counts as one).
  public internal(set) var copyOnReadCount = 0
  /// Whether the medium was ejected or the node closed.
  public private(set) var isClosed = false {
    didSet { Self.graphGeneration &+= 1 }
  }
  /// The answer of ``isInserted`` and the ``graphGeneration`` it was computed
  /// in: requests ask on every layer, and walking the children each time
  /// costs quadratically in a backing chain's depth.
  private var insertedAnswer: (generation: UInt64, inserted: Bool)?
  /// Bumped whenever a node closes or gains or loses a child, which makes
  /// every cached ``isInserted`` answer stale.
  private static var graphGeneration: UInt64 = 0

  let tracked = TrackedRequests()
  var flushActive = false
  var plugDepth = 0
  let flushQueue = BlockWaitQueue()
  let idleWaiters = BlockWaitQueue()
  var parents: [WeakParent] = []
  /// Dirty bitmaps marked by completed writes and discards.
  public internal(set) var dirtyBitmaps: [DirtyBitmap] = []
  /// Hooks run before every write and discard reaches the driver; one that
  /// throws fails the request.
  var beforeWriteHooks: [(id: Int, hook: BeforeWriteHook)] = []
  var nextHookID = 0

  /// Creates a node over a driver. Children are attached with ``attach(_:role:writable:)``
  /// before ``open()`` reads the length and limits.
  public init(name: String, driver: any BlockDriver, options: NodeOptions = NodeOptions()) {
    self.name = name
    self.driver = driver
    self.capabilities = driver.capabilities
    self.options = options
    self.copyOnReadCount = options.copyOnRead ? 1 : 0
    BlockGraph.register(self)
  }

  /// Attaches a child. A writable child is one this node writes through.
  public func attach(_ child: BlockNode, role: ChildRole, writable: Bool? = nil) {
    let writes = writable ?? (role != .backing && !options.readOnly)
    children.append(BlockChild(role: role, node: child, writable: writes))
    Self.graphGeneration &+= 1
    child.parents.append(WeakParent(self))
  }

  /// Detaches every child in `role`.
  public func detach(role: ChildRole) {
    for child in children where child.role == role {
      child.node.parents.removeAll { $0.parent === self || $0.parent == nil }
    }
    children.removeAll { $0.role == role }
    Self.graphGeneration &+= 1
  }

  /// Marks the file and data children written through, or not, as a reopen
  /// makes the node read-write or read-only (a backing child never is).
  func setChildrenWritable(_ writable: Bool) {
    for index in children.indices where children[index].role != .backing {
      children[index].writable = writable
    }
  }

  /// Reads the node's length and refreshes its limits. Call once all children
  /// are attached.
  public func open() async throws {
    refreshLimits()
    length = Self.sectorRounded(try await driver.length(self))
  }

  /// The child in a role, if any.
  public func child(_ role: ChildRole) -> BlockNode? {
    children.first { $0.role == role }?.node
  }

  /// The file child.
  public var file: BlockNode? { child(.file) }
  /// The backing child.
  public var backing: BlockNode? { child(.backing) }

  /// Recomputes ``limits`` (QEMU's `bdrv_refresh_limits`): defaults from the
  /// driver's granularity, merged with the file and backing children, then the
  /// driver's overrides.
  public func refreshLimits() {
    var limits = BlockLimits()
    limits.requestAlignment = capabilities.byteGranular ? 1 : 512
    if let file {
      file.refreshLimits()
      limits.merge(file.limits)
    } else {
      limits.minMemAlignment = 512
      limits.optMemAlignment = 4096
    }
    if let backing {
      backing.refreshLimits()
      limits.merge(backing.limits)
    }
    driver.refreshLimits(&limits, node: self)
    precondition(
      limits.requestAlignment > 0 && limits.requestAlignment & (limits.requestAlignment - 1) == 0,
      "request alignment must be a power of two")
    self.limits = limits
  }

  /// Whether the node (and every child) has a medium.
  public var isInserted: Bool {
    if let answer = insertedAnswer, answer.generation == Self.graphGeneration {
      return answer.inserted
    }
    let inserted = !isClosed && children.allSatisfy { $0.node.isInserted }
    insertedAnswer = (Self.graphGeneration, inserted)
    return inserted
  }

  /// Whether the node refuses writes.
  public var isReadOnly: Bool { options.readOnly }

  /// The allocation unit for copy-on-read: the driver's cluster size, else the
  /// request alignment.
  public var clusterSize: Int64 {
    if let size = driver.clusterSize(self), size > 0 { return size }
    return limits.requestAlignment
  }

  /// Enables copy-on-read for another user (a count, as in QEMU).
  public func enableCopyOnRead() { copyOnReadCount += 1 }
  /// Disables copy-on-read for one user.
  public func disableCopyOnRead() {
    precondition(copyOnReadCount > 0, "copy-on-read not enabled")
    copyOnReadCount -= 1
  }

  /// Drains and flushes the node, then closes its driver and children it owns.
  public func close() async {
    guard !isClosed else { return }
    await drain()
    try? await flush()
    await driver.close(self)
    isClosed = true
    for child in children where child.node.parents.count <= 1 {
      await child.node.close()
    }
  }

  /// Number of tracked requests in flight (introspection for tests and tools).
  public var trackedRequestCount: Int { tracked.count }
  /// Number of tracked requests currently waiting for a conflicting request.
  public var waitingRequestCount: Int { tracked.waitingCount }

  // MARK: In-flight accounting

  func incrementInFlight() { inFlight += 1 }

  func decrementInFlight() {
    inFlight -= 1
    if inFlight == 0 { idleWaiters.wakeAll() }
  }

  /// Runs `body` counted as one request in flight.
  func inFlight<T>(_ body: @BlockActor () async throws -> T) async rethrows -> T {
    incrementInFlight()
    defer { decrementInFlight() }
    return try await body()
  }

  // MARK: Checks

  func checkInserted() throws {
    guard isInserted else { throw BlockError(BlockError.noMediumCode, context: name) }
  }

  func checkWritable() throws {
    try checkInserted()
    if isReadOnly { throw BlockError(.notPermitted, "Block node is read-only", context: name) }
  }

  /// A driver's length rounded up to whole 512-byte sectors, as QEMU keeps node
  /// lengths (`total_sectors`): the last partial sector of a file is readable.
  static func sectorRounded(_ bytes: Int64) -> Int64 { alignUp(bytes, 512) }

  /// The largest read or write one request may carry (QEMU's
  /// `BDRV_REQUEST_MAX_BYTES`, 2 GiB - 512).
  public static let maxRequestBytes: Int64 = 2_147_483_136
  /// The largest offset + length any request may reach (QEMU's `BDRV_MAX_LENGTH`).
  public static let maxLength: Int64 = Int64.max / 2 - Int64.max / 2 % 512

  /// Range validation common to every request (QEMU's `bdrv_check_qiov_request`).
  static func checkRange(_ offset: Int64, _ bytes: Int64, limitTo32Bit: Bool) throws {
    if offset < 0 { throw BlockError(.ioError, "offset is negative: \(offset)") }
    if bytes < 0 { throw BlockError(.ioError, "bytes is negative: \(bytes)") }
    if bytes > maxLength || offset > maxLength - bytes {
      throw BlockError(.ioError, "request exceeds the maximum length")
    }
    if limitTo32Bit && bytes > maxRequestBytes {
      throw BlockError(.invalidArgument, "request of \(bytes) bytes exceeds \(maxRequestBytes)")
    }
  }
}

/// A weak reference to a parent, so that children do not keep parents alive.
@BlockActor
struct WeakParent {
  weak var parent: (any BlockParent)?
  init(_ parent: any BlockParent) { self.parent = parent }
}
