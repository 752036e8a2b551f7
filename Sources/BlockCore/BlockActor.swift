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
}
