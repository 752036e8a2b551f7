import BlockCore
import BlockLoop
import SystemPackage

/// A request suspended at one or more breakpoints; it continues once every
/// one of them was resumed.
@BlockActor
final class SuspendedRequest {
  var tags: [String]
  /// Where the suspended request waits (it resumes on the block layer's
  /// thread in the loop's next pass).
  let waiter = ContextWaiter(context: IOContext.main)

  init(tags: [String]) { self.tags = tags }
}

/// Breakpoints (QEMU's `bdrv_debug_breakpoint`, `bdrv_debug_resume`,
/// `bdrv_debug_remove_breakpoint`, `bdrv_debug_is_suspended`): `break EVENT
/// TAG` suspends the next request that emits the event; `resume TAG` lets it
/// continue.
extension BlkdebugDriver {
  /// Errors of the breakpoint calls, as QEMU's negative errnos.
  public static let noSuchTag = BlockError(.noSuchFileOrDirectory)

  /// Sets a breakpoint: the next request that emits `eventName` is suspended
  /// and tagged `tag`. Throws ENOENT for an unknown event.
  public func addBreakpoint(event eventName: String, tag: String) throws {
    guard let event = BlockDebugEvent(rawValue: eventName) else { throw Self.noSuchTag }
    rules.add(BlkdebugRule(event: event, action: .suspend(tag: tag)))
  }

  /// Resumes the newest request suspended as `tag`. Throws ENOENT when none is.
  public func resume(tag: String) throws {
    guard let request = suspended.last(where: { $0.tags.contains(tag) }) else {
      throw Self.noSuchTag
    }
    resume(request, tag: tag)
  }

  /// Removes the breakpoints tagged `tag` and resumes the requests suspended
  /// as `tag`. Throws ENOENT when no breakpoint was removed (as QEMU 7.2, even
  /// when a request was resumed).
  public func removeBreakpoint(tag: String) throws {
    let found = rules.removeBreakpoints(tag: tag)
    while let request = suspended.last(where: { $0.tags.contains(tag) }) {
      resume(request, tag: tag)
    }
    if !found { throw Self.noSuchTag }
  }

  /// Whether a request is suspended as `tag`.
  public func isSuspended(tag: String) -> Bool {
    suspended.contains { $0.tags.contains(tag) }
  }

  /// Waits until a request is suspended as `tag` (true), or until
  /// ``abandonSuspensionWaits()`` gives up on it (false).
  public func waitForSuspension(tag: String) async -> Bool {
    if isSuspended(tag: tag) { return true }
    let waiter = ContextWaiter(context: IOContext.main)
    suspensionWaiters.append((tag, waiter))
    return await waiter.value() != 0
  }

  /// Ends every ``waitForSuspension(tag:)`` with false.
  public func abandonSuspensionWaits() {
    let waiters = suspensionWaiters
    suspensionWaiters = []
    for waiter in waiters { waiter.waiter.signal(0) }
  }

  /// Suspends the calling request at the breakpoints `tags`.
  func suspend(tags: [String]) async {
    let request = SuspendedRequest(tags: tags)
    suspended.append(request)
    for tag in tags { messageHandler?("blkdebug: Suspended request '\(tag)'\n") }
    let ready = suspensionWaiters.filter { tags.contains($0.tag) }
    suspensionWaiters.removeAll { tags.contains($0.tag) }
    for waiter in ready { waiter.waiter.signal(1) }
    _ = await request.waiter.value()
  }

  private func resume(_ request: SuspendedRequest, tag: String) {
    messageHandler?("blkdebug: Resuming request '\(tag)'\n")
    if let index = request.tags.firstIndex(of: tag) { request.tags.remove(at: index) }
    guard request.tags.isEmpty else { return }
    suspended.removeAll { $0 === request }
    request.waiter.signal(0)
  }

  /// The blkdebug driver of a node or of the first node below it along file
  /// children (QEMU walks primary children the same way).
  public static func find(from node: BlockNode) -> BlkdebugDriver? {
    var current: BlockNode? = node
    while let candidate = current {
      if let driver = candidate.driver as? BlkdebugDriver { return driver }
      current = candidate.file
    }
    return nil
  }
}
