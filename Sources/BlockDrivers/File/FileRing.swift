import BlockCore
import CURing

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// The process's io_uring instance, through which file nodes opened with
/// `aio=io_uring` submit their reads, writes and fdatasyncs (QEMU's
/// block/io_uring.c, one ring per process rather than per AioContext).
///
/// Submissions are made on ``BlockActor`` and never block: an SQE is prepared
/// and handed to the kernel with one `io_uring_enter`. A dedicated completion
/// thread waits for CQEs and resumes each awaiting request with the CQE's
/// result; the request's continuation travels in the SQE's user data as a
/// retained ``Pending`` box. The ring's submission side is touched only on
/// ``BlockActor``. Its completion queue is drained right after each
/// submission by the submitter itself, and otherwise by the completion
/// thread, which sleeps on an eventfd registered with the ring; the submitter
/// switches that eventfd's notifications off around its own io_uring_enter,
/// so that requests the kernel finishes there (page cache hits) resume
/// without a thread wake-up, as in QEMU's one-thread event loop. A mutex in
/// the shim serialises the two consumers.
///
/// When the ring cannot take a request (more requests in flight than the
/// completion queue holds, or no submission entry free) the operation returns
/// ``Outcome/busy`` and the caller runs it on ``FileIOPool`` instead. When no
/// ring can be set up (a kernel without io_uring, seccomp, io_uring_disabled,
/// RLIMIT_MEMLOCK) ``shared`` is nil and file nodes use the thread pool.
///
/// The ring and its thread live until the process exits; the kernel tears
/// the ring down then.
@BlockActor
final class FileRing {
  /// The outcome of one submitted operation.
  enum Outcome: Sendable, Equatable {
    /// The CQE's result: a byte count, or 0 for fdatasync.
    case done(Int)
    /// The CQE's negative errno, as an `Errno`'s raw value.
    case failed(Int32)
    /// Not submitted: the ring has no room. Run it elsewhere.
    case busy
  }

  /// The process's ring, set up on first use; nil when io_uring is unusable.
  static let shared: FileRing? = FileRing(entries: 256)

  /// The errno that setting up the process's ring failed with, if it did.
  private(set) static var setupError: Int32 = 0

  /// Submission entries.
  let entries: Int
  /// How many requests may be in flight: the completion queue's size, so that
  /// it never overflows.
  let capacity: Int
  /// Requests submitted and not yet resumed.
  private(set) var inFlight = 0

  nonisolated(unsafe) private let ring: OpaquePointer

  /// One submitted operation: the continuation to resume and the iovec
  /// array the kernel reads, kept until the CQE arrives.
  private final class Pending: @unchecked Sendable {
    let continuation: UnsafeContinuation<Int32, Never>
    let vectors: UnsafeMutableBufferPointer<iovec>?

    init(
      _ continuation: UnsafeContinuation<Int32, Never>, vectors: UnsafeMutableBufferPointer<iovec>?
    ) {
      self.continuation = continuation
      self.vectors = vectors
    }

    deinit { vectors?.deallocate() }
  }

  /// Sets up a ring of `entries` submission entries and starts its
  /// completion thread; nil when the kernel refuses.
  init?(entries: Int) {
    var error: Int32 = 0
    guard let ring = cur_create(UInt32(entries), &error) else {
      Self.setupError = -error
      return nil
    }
    self.ring = ring
    self.entries = entries
    self.capacity = Int(cur_cq_entries(ring))
    if !Self.startCompletionThread(ring) { return nil }
  }

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
    await submit(vectors: nil) { ring, userData in
      cur_prep_fsync(ring, fd, 1, userData)
    }
  }

  private func transfer(_ fd: Int32, _ iov: IOVector, _ offset: Int64, write: Bool) async
    -> Outcome
  {
    // The kernel reads the segments until the CQE arrives, which `submit`
    // awaits inside this scope: the vector's buffers stay alive until then.
    await iov.withUnsafeSegments { allSegments in
      let segments = allSegments.prefix(PosixFile.maxVectors)
      let vectors = UnsafeMutableBufferPointer<iovec>.allocate(capacity: segments.count)
      for (index, segment) in segments.enumerated() {
        vectors[index] = iovec(iov_base: segment.baseAddress, iov_len: segment.count)
      }
      let base = vectors.baseAddress
      let count = UInt32(vectors.count)
      return await submit(vectors: vectors) { ring, userData in
        cur_prep_rw(ring, write ? 1 : 0, fd, base, count, offset, userData)
      }
    }
  }

  /// Prepares one SQE with `prepare`, submits it and waits for its CQE.
  /// `vectors` is freed once the operation is over.
  private func submit(
    vectors: UnsafeMutableBufferPointer<iovec>?,
    _ prepare: (OpaquePointer, UInt64) -> Int32
  ) async -> Outcome {
    guard inFlight < capacity else {
      vectors?.deallocate()
      return .busy
    }
    inFlight += 1
    defer { inFlight -= 1 }
    let ring = ring
    let result: Int32 = await withUnsafeContinuation { continuation in
      let pending = Unmanaged.passRetained(Pending(continuation, vectors: vectors))
      let userData = UInt64(UInt(bitPattern: pending.toOpaque()))
      guard prepare(ring, userData) == 0 else {
        // No free SQE even after submitting the queue: nothing will complete
        // this request, so resume it here.
        pending.takeRetainedValue().continuation.resume(returning: Int32.min)
        return
      }
      // A failed io_uring_enter (not one of the transient errors the shim
      // retries) leaves the SQE queued for the next submission.
      Self.submitAndReap(ring)
    }
    guard result != Int32.min else { return .busy }
    return result >= 0 ? .done(Int(result)) : .failed(-result)
  }

  /// Submits the queued SQEs and resumes the requests whose CQEs are there
  /// already: those the kernel finished during submission (page cache hits)
  /// and asynchronous ones it posted meanwhile, without waking the
  /// completion thread.
  private static func submitAndReap(_ ring: OpaquePointer) {
    let batch = 32
    withUnsafeTemporaryAllocation(of: UInt64.self, capacity: batch) { userData in
      withUnsafeTemporaryAllocation(of: Int32.self, capacity: batch) { results in
        var taken: Int32 = 0
        _ = cur_submit(ring, userData.baseAddress, results.baseAddress, UInt32(batch), &taken)
        for index in 0..<Int(taken) {
          resume(userData[index], with: results[index])
        }
      }
    }
  }

  /// Resumes the request whose user data is `userData` with `result`.
  private nonisolated static func resume(_ userData: UInt64, with result: Int32) {
    guard let address = UnsafeRawPointer(bitPattern: UInt(userData)) else { return }
    Unmanaged<Pending>.fromOpaque(address).takeRetainedValue().continuation.resume(
      returning: result)
  }

  /// Starts the thread that reaps CQEs until the process exits.
  private nonisolated static func startCompletionThread(_ ring: OpaquePointer) -> Bool {
    let box = Unmanaged.passRetained(RingBox(ring)).toOpaque()
    var thread = pthread_t()
    let result = pthread_create(
      &thread, nil,
      { argument in
        let ring = Unmanaged<RingBox>.fromOpaque(argument!).takeRetainedValue().ring
        FileRing.reapCompletions(ring)
        return nil
      }, box)
    guard result == 0 else {
      Unmanaged<RingBox>.fromOpaque(box).release()
      return false
    }
    pthread_detach(thread)
    return true
  }

  private final class RingBox: @unchecked Sendable {
    let ring: OpaquePointer
    init(_ ring: OpaquePointer) { self.ring = ring }
  }

  /// The completion thread's loop: wait for CQEs, resume their requests.
  private nonisolated static func reapCompletions(_ ring: OpaquePointer) {
    let batch = 64
    var userData = [UInt64](repeating: 0, count: batch)
    var results = [Int32](repeating: 0, count: batch)
    while true {
      let taken = userData.withUnsafeMutableBufferPointer { userData in
        results.withUnsafeMutableBufferPointer { results in
          cur_wait(ring, userData.baseAddress, results.baseAddress, UInt32(batch))
        }
      }
      // A failing wait (the ring is unusable) would otherwise spin.
      guard taken >= 0 else { return }
      for index in 0..<Int(taken) {
        resume(userData[index], with: results[index])
      }
    }
  }
}
