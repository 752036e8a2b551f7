import BlockLoop

/// Tasks on ``BlockActor`` waiting for something another task on it
/// signals (QEMU's `CoQueue`): a flush in progress, a conflicting request,
/// a drain, a lock.
///
/// Each waiter waits on a ``ContextWaiter``, so a woken task resumes on the
/// block layer's thread at the top of the loop's next pass, in the order it
/// was woken, instead of travelling through Swift's shared pool as a
/// continuation would (see docs/ARCHITECTURE.md, "Waits resume on the
/// context"). The waking task runs on until it suspends.
@BlockActor
public final class BlockWaitQueue {
  private var waiting: [ContextWaiter] = []
  private var spare: [ContextWaiter] = []

  /// An empty queue.
  public init() {}

  /// Whether no task waits.
  public var isEmpty: Bool { waiting.isEmpty }

  /// Waits until ``wakeOne()`` or ``wakeAll()`` wakes this task.
  public func wait() async {
    let waiter = spare.popLast() ?? ContextWaiter(context: IOContext.main)
    waiting.append(waiter)
    _ = await waiter.value()
    spare.append(waiter)
  }

  /// Wakes the task that has waited longest; false when none waits.
  @discardableResult
  public func wakeOne() -> Bool {
    guard !waiting.isEmpty else { return false }
    waiting.removeFirst().signal(0)
    return true
  }

  /// Wakes every waiting task, oldest first.
  public func wakeAll() {
    let woken = waiting
    waiting = []
    for waiter in woken { waiter.signal(0) }
  }
}
