import BlockCore
import BlockLoop
import NIOPosix

/// The bounded thread pool on which file drivers run their blocking system
/// calls (QEMU's per-AioContext thread pool).
///
/// One pool of ``threadCount`` threads is started on first use and shared by
/// every file node; it is never shut down. Work submitted from ``BlockActor``
/// runs on a pool thread and the awaiting request resumes on the actor (its
/// I/O context's thread) when it completes; the context counts the call as
/// outstanding meanwhile, so it does not shut down under it. A submitted call always runs to completion: task cancellation
/// does not abandon a system call that may still be touching the request's
/// buffers.
enum FileIOPool {
  /// Number of I/O threads.
  static let threadCount = 4

  private static let pool: NIOThreadPool = {
    let pool = NIOThreadPool(numberOfThreads: threadCount)
    pool.start()
    return pool
  }()

  /// Runs `body` on a pool thread and returns its result.
  static func run<T: Sendable>(
    isolation: isolated (any Actor)? = #isolation, _ body: @escaping @Sendable () throws -> T
  ) async throws -> T {
    let context = IOContext.current
    context?.beginOutstanding()
    defer { context?.endOutstanding() }
    return try await withCheckedThrowingContinuation { continuation in
      pool.submit { state in
        guard case .active = state else {
          continuation.resume(throwing: BlockError(.canceled, "I/O thread pool is not running"))
          return
        }
        continuation.resume(with: Result(catching: body))
      }
    }
  }
}
