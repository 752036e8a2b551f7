import BlockCore
import BlockLoop

/// A first-come first-served async mutex on ``BlockActor`` (QEMU's `CoMutex`
/// around qcow2 metadata, `s->lock`): held across the awaits of a metadata
/// update so that no other request sees or changes tables half-way.
///
/// The lock is handed to the oldest waiter on release. Waiters wait on
/// ``ContextWaiter``s, so a handed-over lock reaches its next holder on the
/// block layer's thread in the loop's next pass, as QEMU wakes the next
/// coroutine: with a continuation it would travel through Swift's shared
/// pool and back while every other request queued behind it.
@BlockActor
final class Qcow2Lock {
  private var held = false
  private var waiters: [ContextWaiter] = []
  private var spare: [ContextWaiter] = []

  /// Runs `body` holding the lock.
  func withLock<T>(_ body: @BlockActor () async throws -> T) async rethrows -> T {
    if held {
      let waiter = spare.popLast() ?? ContextWaiter(context: IOContext.main)
      waiters.append(waiter)
      _ = await waiter.value()
      spare.append(waiter)
    } else {
      held = true
    }
    defer { release() }
    return try await body()
  }

  /// Hands the lock to the next waiter, or frees it.
  private func release() {
    if waiters.isEmpty {
      held = false
    } else {
      waiters.removeFirst().signal(0)
    }
  }
}
