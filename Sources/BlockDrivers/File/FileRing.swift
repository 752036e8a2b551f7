import BlockCore
import BlockLoop

/// The io_uring through which file nodes opened with `aio=io_uring` submit
/// their reads, writes and fdatasyncs: the ring of ``IOContext/main``, the
/// context ``BlockActor`` runs on (QEMU's block/io_uring.c, one ring per
/// AioContext).
///
/// A request prepares a submission entry on the context's thread and
/// suspends; the loop hands every entry its turn prepared to the kernel in
/// one `io_uring_enter`, reaps the completions itself and resumes the
/// requests on the same thread (see ``IOContextRing``). No other thread is
/// involved, so a request costs no wake-up unless the loop was asleep.
///
/// When no ring can be set up (a kernel without io_uring, seccomp,
/// io_uring_disabled, RLIMIT_MEMLOCK) ``shared`` is nil and file nodes use
/// the thread pool.
@BlockActor
final class FileRing {
  /// The outcome of one submitted operation.
  enum Outcome: Sendable, Equatable {
    /// The completion's result: a byte count, or 0 for fdatasync.
    case done(Int)
    /// The completion's negative errno, as an `Errno`'s raw value.
    case failed(Int32)
  }

  /// The main context's ring; nil when io_uring is unusable.
  static let shared: FileRing? = IOContext.main.ring.map { FileRing($0) }

  /// The errno that setting up the main context's ring failed with, if it did.
  static var setupError: Int32 { IOContext.main.ringSetupError }

  /// The context's ring.
  let ring: IOContextRing

  init(_ ring: IOContextRing) { self.ring = ring }

  /// preadv on `fd` into `iov` at `offset` (at most ``PosixFile/maxVectors``
  /// segments are used; the caller continues after a short read).
  func read(_ fd: Int32, into iov: IOVector, at offset: Int64) async -> Outcome {
    await transfer(fd, iov, offset, write: false)
  }

  /// pwritev on `fd` from `iov` at `offset`, as ``read(_:into:at:)``.
  func write(_ fd: Int32, from iov: IOVector, at offset: Int64) async -> Outcome {
    await transfer(fd, iov, offset, write: true)
  }

  /// fdatasync on `fd`.
  func dataSync(_ fd: Int32) async -> Outcome {
    outcome(await ring.dataSync(fd: fd))
  }

  private func transfer(_ fd: Int32, _ iov: IOVector, _ offset: Int64, write: Bool) async
    -> Outcome
  {
    let ring = ring
    // The kernel uses the segments until the completion, which `transfer`
    // awaits inside this scope: the vector's buffers stay alive until then.
    let result = await iov.withUnsafeSegments { segments in
      await ring.transfer(fd: fd, offset: offset, write: write, segments: segments[...])
    }
    return outcome(result)
  }

  /// The outcome of a completion's result.
  static func outcome(_ result: Int32) -> Outcome {
    result >= 0 ? .done(Int(result)) : .failed(-result)
  }

  private func outcome(_ result: Int32) -> Outcome { Self.outcome(result) }
}
