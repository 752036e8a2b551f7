import BlockCore

/// A first-come first-served async mutex on ``BlockActor`` (QEMU's `CoMutex`
/// around qcow2 metadata, `s->lock`): held across the awaits of a metadata
/// update so that no other request sees or changes tables half-way.
@BlockActor
final class Qcow2Lock {
  private var held = false
  private var waiters: [CheckedContinuation<Void, Never>] = []

  /// Runs `body` holding the lock.
  func withLock<T>(_ body: () async throws -> T) async rethrows -> T {
    if held {
      await withCheckedContinuation { waiters.append($0) }
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
      waiters.removeFirst().resume()
    }
  }
}
