import BlockCore

/// A first-come first-served async mutex on ``BlockActor`` (QEMU's `CoMutex`
/// around qcow2 metadata, `s->lock`): held across the awaits of a metadata
/// update so that no other request sees or changes tables half-way.
///
/// The lock is handed to the oldest waiter on release; waiters wait in a
/// ``BlockWaitQueue``, so the next holder resumes on the block layer's
/// thread in the loop's next pass, as QEMU wakes the next coroutine (with a
/// continuation it would travel through Swift's shared pool and back while
/// every other request queued behind it).
@BlockActor
final class Qcow2Lock {
  private var held = false
  private let waiters = BlockWaitQueue()

  /// Runs `body` holding the lock.
  func withLock<T>(_ body: @BlockActor () async throws -> T) async rethrows -> T {
    if held {
      await waiters.wait()
    } else {
      held = true
    }
    defer { release() }
    return try await body()
  }

  /// Hands the lock to the next waiter, or frees it.
  private func release() {
    if !waiters.wakeOne() { held = false }
  }
}
