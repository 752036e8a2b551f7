import BlockLoop

/// The serial executor that owns every block graph's state.
///
/// Nodes, drivers, backends and the engine's bookkeeping are isolated to this
/// actor, so state changes only between suspension points, as in QEMU's
/// coroutines on one AioContext. The actor runs on ``IOContext/main``: one
/// dedicated thread that also owns the io_uring the file driver submits to,
/// so a request and its I/O completion never change threads. Blocking system
/// calls never run here: drivers hand them to an I/O thread pool and the
/// request resumes on this actor when they complete.
@globalActor
public actor BlockActor {
  /// The one instance.
  public static let shared = BlockActor()

  /// ``IOContext/main``'s executor.
  public nonisolated var unownedExecutor: UnownedSerialExecutor {
    IOContext.main.asUnownedSerialExecutor()
  }

  /// Runs `body` in a task that prefers ``IOContext/main`` as its task
  /// executor, and so do the child tasks it creates: their nonisolated code
  /// and every continuation they resume on (an I/O completion, a lock
  /// handed over) run on the block layer's thread instead of hopping
  /// through Swift's shared pool and back, a thread switch each way.
  /// Long-running entry points (bench, convert, serve, io) run in it.
  public static func run<T, Failure: Error>(
    isolation: isolated (any Actor)? = #isolation, _ body: () async throws(Failure) -> T
  ) async throws(Failure) -> T {
    try await withTaskExecutorPreference(IOContext.main, isolation: isolation, operation: body)
  }
}
