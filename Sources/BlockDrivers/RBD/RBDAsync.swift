import BlockCore
import BlockLoop
import CRBD
import Foundation

/// How the rbd driver waits for librbd without blocking the block layer.
///
/// librbd's asynchronous calls (`rbd_aio_*`) complete on librbd's own
/// threads: ``submit(_:)`` gives each request a completion whose callback
/// takes the result and resumes the waiting request's continuation, which
/// enqueues the request back on its I/O context (the context's inbox wakes
/// its loop); the callback never blocks. Many requests can be in flight
/// at once. The calls librbd only offers synchronously (connect, open,
/// close, resize, diff-iterate, create) run on a thread of their own
/// (``blocking(_:)``), never on the context's thread nor on Swift's shared
/// pool, whose two threads every test shares.
enum RBDAsync {
  /// Starts one librbd asynchronous request with `start` (given the
  /// completion to pass to librbd; it returns librbd's immediate result)
  /// and waits for it. Returns the request's return value: negative errno
  /// on failure, else the byte count (reads) or 0. A request that was
  /// started always runs to completion (its buffers must stay valid), so
  /// task cancellation does not end the wait.
  static func submit(
    isolation: isolated (any Actor)? = #isolation,
    _ start: (rbd_completion_t) -> Int32
  ) async -> Int {
    let context = IOContext.current
    context?.beginOutstanding()
    defer { context?.endOutstanding() }
    return await withCheckedContinuation(isolation: isolation) { continuation in
      let waiter = Unmanaged.passRetained(RBDWaiter(continuation))
      var completion: rbd_completion_t?
      var result = rbd_aio_create_completion(
        waiter.toOpaque(), rbdCompletionCallback, &completion)
      if result >= 0, let completion {
        result = start(completion)
        if result >= 0 { return }
        rbd_aio_release(completion)
      }
      waiter.release()
      continuation.resume(returning: Int(result))
    }
  }

  /// Runs the blocking `body` on a new thread of its own and returns its
  /// result; the caller's I/O context keeps serving other requests
  /// meanwhile (and counts the call as outstanding, so it does not stop
  /// under it).
  static func blocking<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    let context = IOContext.current
    context?.beginOutstanding()
    defer { context?.endOutstanding() }
    return await withCheckedContinuation { continuation in
      let thread = Thread { continuation.resume(returning: body()) }
      thread.name = "spindle-rbd"
      thread.start()
    }
  }
}

/// The continuation a librbd completion resumes.
private final class RBDWaiter: @unchecked Sendable {
  let continuation: CheckedContinuation<Int, Never>
  init(_ continuation: CheckedContinuation<Int, Never>) { self.continuation = continuation }
}

/// librbd's completion callback (on a librbd thread): takes the result,
/// releases the completion and resumes the waiter. Never blocks.
private let rbdCompletionCallback: rbd_callback_t = { completion, argument in
  let value = rbd_aio_get_return_value(completion)
  rbd_aio_release(completion)
  guard let argument else { return }
  let waiter = Unmanaged<RBDWaiter>.fromOpaque(argument).takeRetainedValue()
  waiter.continuation.resume(returning: Int(value))
}
