import CURing

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// The io_uring of one ``IOContext``: requests made on the context's thread
/// are prepared as submission entries and reach the kernel at the end of the
/// loop's turn, all in one `io_uring_enter`; the loop reaps the completions
/// and resumes their requests on the same thread.
///
/// - A full submission queue is flushed (one `io_uring_enter`) and
///   preparing continues.
/// - At most ``capacity`` requests are in flight (one completion entry is
///   kept for the loop's wake-up poll), so the completion queue never
///   overflows; a request beyond that waits for a slot, first come first
///   served, and never leaves the ring.
/// - Each in-flight request owns a slot: its waiter and its iovec array
///   (a few inline entries per slot, a separate array only for more
///   segments), so a request allocates nothing here. A slot's index is the
///   submission's user data (0 is the wake-up poll).
///
/// `@unchecked Sendable`: every method is called on the owning context's
/// thread (checked by a precondition on the request entry points); the
/// context is the only other user, from that thread too.
public final class IOContextRing: @unchecked Sendable {
  /// Submission entries.
  public let submissionEntries: Int
  /// How many requests may be in flight at once.
  public let capacity: Int
  /// Requests prepared and not yet completed.
  public private(set) var inFlight = 0
  /// `io_uring_enter` calls made (statistics for tests and benchmarks).
  public private(set) var enters = 0
  /// Flushes forced by a full submission queue in the middle of a turn.
  public private(set) var fullQueueFlushes = 0
  /// The most requests in flight at once so far.
  public private(set) var peakInFlight = 0
  /// Requests that had to wait for a slot because ``capacity`` were in flight.
  public private(set) var slotWaits = 0

  /// Segments kept inline in each slot.
  static let inlineVectors = 4
  /// The most segments one request may have (IOV_MAX).
  public static let maxVectors = 1024

  private let ring: OpaquePointer
  private let wakeFD: Int32
  unowned(unsafe) var context: IOContext?
  private var wakeArmed = false
  /// Each slot's waiter (made on first use) and whether a request waits
  /// on it.
  private var waiters: [ContextWaiter?]
  private var waiting: [Bool]
  private let vectors: UnsafeMutablePointer<iovec>
  private var spilled: [UnsafeMutableBufferPointer<iovec>?]
  private var freeSlots: [Int32]
  private var slotWaiters: [UnsafeContinuation<Int, Never>] = []
  private var nextWaiter = 0

  /// A ring, or nil and the negated errno when the kernel refuses one.
  static func make(entries: Int, completionEntries: Int, wakeFD: Int32) -> (IOContextRing?, Int32) {
    var error: Int32 = 0
    guard let ring = cur_create(UInt32(entries), UInt32(completionEntries), &error) else {
      return (nil, -error)
    }
    return (IOContextRing(ring, wakeFD: wakeFD), 0)
  }

  private init(_ ring: OpaquePointer, wakeFD: Int32) {
    self.ring = ring
    self.wakeFD = wakeFD
    submissionEntries = Int(cur_sq_entries(ring))
    capacity = Int(cur_cq_entries(ring)) - 1
    waiters = Array(repeating: nil, count: capacity)
    waiting = Array(repeating: false, count: capacity)
    spilled = Array(repeating: nil, count: capacity)
    vectors = .allocate(capacity: capacity * Self.inlineVectors)
    freeSlots = (0..<Int32(capacity)).reversed()
  }

  // MARK: Requests

  /// preadv (`write` false) or pwritev of at most ``maxVectors`` of
  /// `segments` at `offset` on `fd`. Returns the completion's result: a byte
  /// count or a negated errno. The segments' memory must stay valid until it
  /// returns (the kernel uses it until then).
  public nonisolated(nonsending) func transfer(
    fd: Int32, offset: Int64, write: Bool,
    segments: ArraySlice<UnsafeMutableRawBufferPointer>
  ) async -> Int32 {
    precondition(context?.isCurrent == true, "ring used off its I/O context's thread")
    let slot: Int
    if let free = freeSlots.popLast() { slot = Int(free) } else { slot = await waitForSlot() }
    let count = min(segments.count, Self.maxVectors)
    let iov: UnsafeMutablePointer<iovec>
    if count <= Self.inlineVectors {
      iov = vectors + slot * Self.inlineVectors
    } else {
      let buffer = UnsafeMutableBufferPointer<iovec>.allocate(capacity: count)
      spilled[slot] = buffer
      iov = buffer.baseAddress!
    }
    var index = 0
    for segment in segments.prefix(count) {
      iov[index] = iovec(iov_base: segment.baseAddress, iov_len: segment.count)
      index += 1
    }
    let ring = ring
    let waiter = start(slot) { userData in
      cur_prep_rw(ring, write ? 1 : 0, fd, iov, UInt32(count), offset, userData)
    }
    return await Int32(truncatingIfNeeded: waiter.value())
  }

  /// fdatasync on `fd`: 0 or a negated errno.
  public nonisolated(nonsending) func dataSync(fd: Int32) async -> Int32 {
    precondition(context?.isCurrent == true, "ring used off its I/O context's thread")
    let slot: Int
    if let free = freeSlots.popLast() { slot = Int(free) } else { slot = await waitForSlot() }
    let ring = ring
    let waiter = start(slot) { userData in cur_prep_fsync(ring, fd, 1, userData) }
    return await Int32(truncatingIfNeeded: waiter.value())
  }

  private nonisolated(nonsending) func waitForSlot() async -> Int {
    slotWaits += 1
    return await withUnsafeContinuation { slotWaiters.append($0) }
  }

  /// Prepares the slot's submission and returns the waiter its result will
  /// be signalled on; a full queue is flushed first. Should the kernel
  /// refuse even that, the waiter has the error already.
  private func start(_ slot: Int, _ prepare: (UInt64) -> Int32) -> ContextWaiter {
    let waiter = waiters[slot] ?? makeWaiter(slot)
    let userData = UInt64(slot + 1)
    if prepare(userData) != 0 {
      fullQueueFlushes += 1
      let submitted = flush()
      if submitted < 0 || prepare(userData) != 0 {
        // A waiter of its own: the slot may go to another request at once.
        let failed = ContextWaiter(context: context!)
        failed.signal(Int(submitted < 0 ? submitted : -EBUSY))
        freeSlot(slot)
        return failed
      }
    }
    waiting[slot] = true
    inFlight += 1
    peakInFlight = max(peakInFlight, inFlight)
    return waiter
  }

  private func makeWaiter(_ slot: Int) -> ContextWaiter {
    let waiter = ContextWaiter(context: context!)
    waiters[slot] = waiter
    return waiter
  }

  // MARK: The loop's side

  /// Hands what this turn prepared to the kernel (one `io_uring_enter`, none
  /// when nothing is queued) and resumes the requests whose completions are
  /// there. Returns the number of completions taken.
  func submitAndReap() -> Int {
    if cur_sq_queued(ring) > 0 { _ = flush() }
    return reap()
  }

  /// Sleeps in the kernel until a completion is posted; a poll of the
  /// context's eventfd is armed on the ring, so an enqueue from another
  /// thread wakes it too.
  func waitForCompletion() {
    if !wakeArmed {
      if cur_prep_poll_in(ring, wakeFD, 0) != 0 {
        _ = flush()
        guard cur_prep_poll_in(ring, wakeFD, 0) == 0 else { return }
      }
      wakeArmed = true
    }
    enters += 1
    _ = cur_submit(ring, 1)
  }

  func destroy() {
    cur_destroy(ring)
    vectors.deallocate()
  }

  private func flush() -> Int32 {
    enters += 1
    return cur_submit(ring, 0)
  }

  private func reap() -> Int {
    let batch = 64
    return withUnsafeTemporaryAllocation(of: UInt64.self, capacity: batch) { userData in
      withUnsafeTemporaryAllocation(of: Int32.self, capacity: batch) { results in
        var total = 0
        while true {
          let taken = Int(cur_reap(ring, userData.baseAddress, results.baseAddress, UInt32(batch)))
          for index in 0..<taken { complete(userData[index], results[index]) }
          total += taken
          if taken < batch { return total }
        }
      }
    }
  }

  private func complete(_ userData: UInt64, _ result: Int32) {
    guard userData != 0 else {
      wakeArmed = false
      cur_eventfd_drain(wakeFD)
      return
    }
    let slot = Int(userData - 1)
    guard waiting[slot], let waiter = waiters[slot] else { return }
    waiting[slot] = false
    inFlight -= 1
    // The signalled task takes its result at the top of the loop's next
    // pass, before any job runs: a request the slot goes to meanwhile (a
    // slot waiter, resumed as a job) cannot reach this waiter first.
    waiter.signal(Int(result))
    freeSlot(slot)
  }

  /// Gives the slot to the oldest request waiting for one, or frees it.
  private func freeSlot(_ slot: Int) {
    if let buffer = spilled[slot] {
      buffer.deallocate()
      spilled[slot] = nil
    }
    guard nextWaiter < slotWaiters.count else {
      freeSlots.append(Int32(slot))
      return
    }
    let waiter = slotWaiters[nextWaiter]
    nextWaiter += 1
    if nextWaiter == slotWaiters.count {
      slotWaiters.removeAll(keepingCapacity: true)
      nextWaiter = 0
    }
    waiter.resume(returning: slot)
  }
}
