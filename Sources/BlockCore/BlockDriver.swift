/// What a driver is in the graph.
public enum DriverKind: Sendable {
  /// Stores data itself (file, null-co, memory, nbd).
  case protocolDriver
  /// Interprets the bytes of a `file` child (raw, qcow2).
  case format
  /// Passes requests through to one child, changing only behaviour (blkdebug,
  /// copy-on-read).
  case filter
}

/// What a driver can do, declared rather than guessed.
public struct DriverCapabilities: Sendable, Equatable {
  /// Format, protocol or filter.
  public var kind: DriverKind
  /// Flags ``BlockDriver/write(_:offset:length:from:flags:)`` accepts (at most FUA).
  public var supportedWriteFlags: RequestFlags = []
  /// Flags ``BlockDriver/writeZeroes(_:offset:length:flags:)`` accepts (FUA,
  /// MAY_UNMAP, NO_FALLBACK).
  public var supportedZeroFlags: RequestFlags = []
  /// Whether the driver implements efficient zero-writes at all; the engine uses
  /// it to decide whether detect-zeroes and copy-on-read may issue them.
  public var canWriteZeroes = false
  /// Whether ``BlockDriver/writeCompressed(_:offset:length:from:)`` works.
  public var canWriteCompressed = false
  /// Whether the driver answers ``BlockDriver/blockStatus(_:wantZero:offset:length:)``
  /// itself; when false the engine reports the whole range as allocated data.
  public var hasBlockStatus = false
  /// Whether the driver accepts byte-granular requests; when false the engine
  /// aligns every request to 512 bytes.
  public var byteGranular = true
  /// Whether the driver has backing-file semantics: ranges it reports as neither
  /// DATA nor ZERO read from the backing child, or as zeroes when it has none.
  public var supportsBacking = false
  /// Whether the driver wants ``BlockDriver/debugEvent(_:_:)`` calls (blkdebug).
  public var handlesDebugEvents = false

  /// Capabilities of a driver of the given kind that supports nothing optional.
  public init(kind: DriverKind) { self.kind = kind }
}

/// How a truncate that grows a node allocates the new space (QEMU's `preallocation=`).
public enum PreallocationMode: String, Sendable {
  case off, metadata, falloc, full
}

/// A block driver: the code behind one node (QEMU's `BlockDriver`).
///
/// The engine (``BlockNode``) calls these requirements after validating,
/// aligning, serialising and fragmenting the request, so a driver never sees:
/// a zero-length request; an offset or length not aligned to the node's
/// ``BlockLimits/requestAlignment`` (except that a read or write may end at the
/// node's unaligned end of file rounded up to the alignment); a read or write
/// longer than ``BlockLimits/maxTransfer``; a flag it did not declare in
/// ``capabilities``. Every requirement runs on ``BlockActor``; one that blocks
/// (system calls) must suspend and do the work elsewhere.
///
/// A requirement the driver does not implement has a default that throws
/// ENOTSUP (or does nothing, where QEMU's absence means "nothing to do"); each
/// requirement documents what the engine does with ENOTSUP.
@BlockActor
public protocol BlockDriver: AnyObject {
  /// The format or protocol name, as QEMU prints it (`raw`, `null-co`, `file`).
  var formatName: String { get }

  /// What the driver can do. Read once when the node is created.
  var capabilities: DriverCapabilities { get }

  /// Called when the node refreshes its limits, after the children's limits have
  /// been merged into `limits`; the driver sets what it requires.
  func refreshLimits(_ limits: inout BlockLimits, node: BlockNode)

  /// The node's current length in bytes. Called when the node is opened and
  /// after truncate.
  func length(_ node: BlockNode) async throws -> Int64

  /// Reads `length` bytes at `offset` into `iov` (whose count is `length`).
  /// Aligned; may extend past end of file up to the aligned end, which the driver
  /// must fill with zeroes. Flags: none today.
  func read(
    _ node: BlockNode, offset: Int64, length: Int64, into iov: IOVector, flags: RequestFlags)
    async throws

  /// Writes `length` bytes from `iov` at `offset`. Aligned, at most maxTransfer;
  /// flags are a subset of ``DriverCapabilities/supportedWriteFlags``. Writing
  /// past the end grows the node.
  func write(
    _ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector, flags: RequestFlags)
    async throws

  /// Makes `length` bytes at `offset` read as zeroes. Aligned to the request
  /// alignment; the body of a split request is aligned to
  /// ``BlockLimits/pwriteZeroesAlignment`` and at most
  /// ``BlockLimits/maxPwriteZeroes``. Flags are a subset of
  /// ``DriverCapabilities/supportedZeroFlags``; MAY_UNMAP allows deallocating.
  /// ENOTSUP: the engine writes a zeroed bounce buffer instead, unless the
  /// request carries NO_FALLBACK.
  func writeZeroes(_ node: BlockNode, offset: Int64, length: Int64, flags: RequestFlags)
    async throws

  /// Discards `length` bytes at `offset` (a hint: the range's content becomes
  /// unspecified). Aligned to ``BlockLimits/pdiscardAlignment`` and at most
  /// ``BlockLimits/maxPdiscard``. ENOTSUP: the engine reports success.
  func discard(_ node: BlockNode, offset: Int64, length: Int64) async throws

  /// Writes the driver's cached data to the operating system. Always called by a
  /// flush, even with cache=unsafe. Default: nothing to do.
  func flushToOS(_ node: BlockNode) async throws

  /// Makes written data durable (fdatasync). Called by a flush unless nothing
  /// was written since the last one or the node is cache=unsafe. Default:
  /// nothing to do.
  func flushToDisk(_ node: BlockNode) async throws

  /// The status of the range at `offset` (aligned, `length` > 0, within the
  /// node). Returns a status whose count is at least 1 and at most `length`.
  /// With `wantZero` false the caller only needs allocation, so the driver may
  /// answer with the cheapest accurate result. Called only when
  /// ``DriverCapabilities/hasBlockStatus`` is true.
  func blockStatus(_ node: BlockNode, wantZero: Bool, offset: Int64, length: Int64)
    async throws -> BlockStatus

  /// Changes the node's length. `exact` false allows the driver to keep a
  /// larger length. ENOTSUP: the engine reports that the driver cannot resize.
  func truncate(
    _ node: BlockNode, to length: Int64, exact: Bool, preallocation: PreallocationMode)
    async throws

  /// Writes compressed data (whole clusters). ENOTSUP: reported to the caller.
  func writeCompressed(_ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector)
    async throws

  /// The unit of allocation in bytes (copy-on-read rounds to it); nil when the
  /// driver has none, in which case the request alignment is used.
  func clusterSize(_ node: BlockNode) -> Int64?

  /// Reads (`isLoad`) or writes the VM state area at `offset`. ENOTSUP: the
  /// engine tries the node's file child, then reports ENOTSUP.
  func vmstate(_ node: BlockNode, offset: Int64, iov: IOVector, isLoad: Bool) async throws

  /// Prepares a reopen of the node with new options (QEMU's
  /// `bdrv_reopen_prepare` of a driver); see ``BlockNode/reopen(_:)``. Called
  /// with the graph drained and flushed, the node's parents first. The driver
  /// checks the options it can change (removing them from
  /// `request.options`), acquires what the new state needs (a descriptor
  /// opened read-write, caches of the new size) without changing its current
  /// state, and returns the staged change; the engine commits it once every
  /// node prepared, or aborts it. A prepare that throws must leave nothing
  /// behind. The new read-only, cache, discard and detect-zeroes settings are
  /// in `request.nodeOptions`. Default: the driver cannot be reopened (QEMU's
  /// "Block format '...' used by node '...' does not support reopening
  /// files").
  func prepareReopen(_ node: BlockNode, _ request: inout BlockReopenRequest) async throws
    -> any BlockReopenChange

  /// Completes the options given for a reopen with those the node has
  /// (QEMU's `bdrv_join_options`): a given option wins, an option not given
  /// keeps its old value. A driver whose options depend on each other drops
  /// old ones a new one replaces (qcow2: a new `cache-size` replaces the old
  /// `l2-cache-size`). Default: every old option not given is kept.
  func joinReopenOptions(_ options: inout [String: String], old: [String: String])

  /// Batching hints: requests issued between `plug` and `unplug` may be
  /// submitted together. Default: nothing to do.
  func plug(_ node: BlockNode)
  /// Ends a batch started by ``plug(_:)``.
  func unplug(_ node: BlockNode)

  /// A debug event was emitted on this node (see ``BlockDebugEvent``). Called
  /// only when ``DriverCapabilities/handlesDebugEvents`` is set. May suspend the
  /// request (breakpoints) or throw to fail it (error injection). Default:
  /// nothing.
  func debugEvent(_ node: BlockNode, _ event: BlockDebugEvent) async throws

  /// The bytes of storage the node occupies (QEMU's
  /// `bdrv_get_allocated_file_size` driver callback), for protocol drivers
  /// that know it. Default: ENOTSUP, and ``BlockNode/allocatedFileSize()``
  /// answers from the children instead.
  func allocatedFileSize(_ node: BlockNode) async throws -> Int64

  /// Releases the driver's resources. Called once, after the node is drained and
  /// flushed. Default: nothing to do.
  func close(_ node: BlockNode) async
}

extension BlockDriver {
  public func refreshLimits(_ limits: inout BlockLimits, node: BlockNode) {}
  public func writeZeroes(_ node: BlockNode, offset: Int64, length: Int64, flags: RequestFlags)
    async throws
  { throw BlockError.notSupported() }
  public func discard(_ node: BlockNode, offset: Int64, length: Int64) async throws {
    throw BlockError.notSupported()
  }
  public func flushToOS(_ node: BlockNode) async throws {}
  public func flushToDisk(_ node: BlockNode) async throws {}
  public func blockStatus(_ node: BlockNode, wantZero: Bool, offset: Int64, length: Int64)
    async throws -> BlockStatus
  { throw BlockError.notSupported() }
  public func truncate(
    _ node: BlockNode, to length: Int64, exact: Bool, preallocation: PreallocationMode
  ) async throws {
    throw BlockError.notSupported("Image format driver does not support resize")
  }
  public func writeCompressed(_ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector)
    async throws
  { throw BlockError.notSupported() }
  public func clusterSize(_ node: BlockNode) -> Int64? { nil }
  public func vmstate(_ node: BlockNode, offset: Int64, iov: IOVector, isLoad: Bool) async throws {
    throw BlockError.notSupported()
  }
  public func prepareReopen(_ node: BlockNode, _ request: inout BlockReopenRequest) async throws
    -> any BlockReopenChange
  {
    throw BlockError(
      .notPermitted,
      "Block format '\(formatName)' used by node '\(node.name)' does not support reopening files")
  }
  public func joinReopenOptions(_ options: inout [String: String], old: [String: String]) {
    options.merge(old) { given, _ in given }
  }
  public func plug(_ node: BlockNode) {}
  public func unplug(_ node: BlockNode) {}
  public func close(_ node: BlockNode) async {}
  public func allocatedFileSize(_ node: BlockNode) async throws -> Int64 {
    throw BlockError.notSupported()
  }
  public func debugEvent(_ node: BlockNode, _ event: BlockDebugEvent) async throws {}
}
