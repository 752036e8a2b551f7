/// One node's part of a reopen (QEMU's `BDRVReopenState`), as its driver sees
/// it in ``BlockDriver/prepareReopen(_:_:)``.
///
/// `options` holds every option the node will have: those given for the
/// reopen over those it was opened with (and, for children, what they inherit
/// from their parent). The engine has already taken out the options it acts on
/// (read-only, cache, discard, detect-zeroes: see ``nodeOptions``). A driver
/// removes the options it can change; whatever is left must equal the value
/// the node was opened with, or the reopen fails with "Cannot change the
/// option '...'".
public struct BlockReopenRequest: Sendable {
  /// The options left for the driver, by dotted key (`lazy-refcounts`, `size`).
  public var options: [String: String]
  /// The engine options the node has once the reopen commits.
  public let nodeOptions: NodeOptions
  /// `auto-read-only`: a read-write node may fall back to read-only when the
  /// file cannot be written.
  public let autoReadOnly: Bool

  /// Creates a request.
  public init(options: [String: String], nodeOptions: NodeOptions, autoReadOnly: Bool = false) {
    self.options = options
    self.nodeOptions = nodeOptions
    self.autoReadOnly = autoReadOnly
  }
}

/// A driver's staged reopen (QEMU's `bdrv_reopen_commit` / `bdrv_reopen_abort`
/// pair): returned by ``BlockDriver/prepareReopen(_:_:)`` once every check
/// passed and every resource the new state needs is held, then either
/// committed or aborted, exactly once.
///
/// `commit` makes the staged state current and cannot fail: everything that
/// can fail belongs in the prepare. `abort` releases what the prepare took and
/// leaves the driver as it was before.
@BlockActor
public protocol BlockReopenChange: AnyObject {
  /// Makes the staged state the driver's state. Called after every node of the
  /// reopen prepared successfully, children before parents.
  func commit() async
  /// Drops the staged state. Called when another node's prepare failed.
  func abort() async
}

/// The staged reopen of a driver that has nothing to change: it accepts the
/// reopen (the engine still checks that no option changes).
@BlockActor
public final class UnchangedReopen: BlockReopenChange {
  /// Creates the change.
  public init() {}
  public func commit() async {}
  public func abort() async {}
}

/// A staged reopen built from two closures: `commit` applies, `abort` undoes
/// what the prepare took (nothing by default).
@BlockActor
public final class ClosureReopen: BlockReopenChange {
  private let onCommit: @BlockActor () async -> Void
  private let onAbort: @BlockActor () async -> Void

  /// Creates a change that runs `commit` or `abort`.
  public init(
    commit: @escaping @BlockActor () async -> Void,
    abort: @escaping @BlockActor () async -> Void = {}
  ) {
    onCommit = commit
    onAbort = abort
  }

  public func commit() async { await onCommit() }
  public func abort() async { await onAbort() }
}
