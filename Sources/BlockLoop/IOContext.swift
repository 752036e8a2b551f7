import CURing
import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// An event loop of the block layer (QEMU's AioContext): a serial executor
/// whose jobs run on one dedicated thread, which also owns an io_uring.
///
/// One turn of the loop runs the jobs that are ready, hands every submission
/// they prepared to the kernel in one `io_uring_enter`, and reaps the
/// completions that are there, resuming their requests on this same thread.
/// When there is nothing to run and nothing completed it sleeps in the kernel
/// (in `io_uring_enter` waiting for one completion, with a poll of its eventfd
/// armed on the ring; or in `poll` on the eventfd when there is no ring) until
/// a completion arrives or another thread enqueues a job.
///
/// Wake-ups: a job enqueued on the loop's own thread goes to a local queue
/// with no synchronisation. A job from another thread goes to the inbox
/// (a mutex-guarded array) and writes the eventfd only if the loop is asleep
/// or about to sleep: the loop stores ``LoopState/asleep`` before it looks at
/// the inbox a last time, and an enqueuer swaps the state to awake after its
/// append. Whichever comes second sees the other (see ``sleep()``).
///
/// `@unchecked Sendable`: the inbox, the state and the counters are
/// synchronised (`Mutex`, `Atomic`); every other stored property is touched
/// only on the loop's thread (or before the thread starts / after it ends).
public final class IOContext: SerialExecutor, TaskExecutor, @unchecked Sendable {
  /// The context the block layer runs on (``BlockActor``'s executor):
  /// started on first use, it lives as long as the process.
  public static let main = IOContext(name: "spindle-io")

  /// Submission entries of a context's ring unless told otherwise.
  public static let defaultRingEntries = 128
  /// Completion entries of a context's ring unless told otherwise: more than
  /// the submission queue, since requests in flight are bounded by it.
  public static let defaultCompletionEntries = 1024

  /// The thread's name (at most 15 bytes reach the kernel).
  public let name: String
  /// The ring, or nil when the context runs without io_uring (the kernel
  /// refused it, or it was not wanted): then blocking calls go to threads and
  /// their completions come back through the inbox.
  public let ring: IOContextRing?
  /// The negated errno `io_uring_setup` failed with (0 when there is a ring or
  /// none was asked for).
  public let ringSetupError: Int32

  private enum LoopState: UInt8 {
    case awake = 0
    case asleep = 1
  }

  private let inbox = Mutex<[UnownedJob]>([])
  private let state = Atomic<UInt8>(LoopState.awake.rawValue)
  private let stopping = Atomic<Bool>(false)
  /// Operations outside the ring (thread-pool calls) whose completion will
  /// come back through the inbox: the loop does not end before they do.
  private let outstanding = Atomic<Int>(0)
  private let wakeFD: Int32
  /// Jobs enqueued on the loop's own thread, run in the next turn.
  private var ready: [UnownedJob] = []
  /// The jobs of the turn being run.
  private var running: [UnownedJob] = []
  /// Jobs of tasks that waited on a ``ContextWaiter`` and were signalled,
  /// with the waiter's executor they run on (see ``resume(_:on:)``).
  private var resumed: [(job: UnownedJob, executor: UnownedSerialExecutor)] = []
  private var resuming: [(job: UnownedJob, executor: UnownedSerialExecutor)] = []
  private var thread = pthread_t()
  private let ended = Atomic<Bool>(false)

  /// Jobs enqueued from other threads (each may have cost a wake-up).
  public let foreignEnqueues = Atomic<Int>(0)
  /// Eventfd writes: wake-ups of a sleeping loop.
  public let wakeups = Atomic<Int>(0)
  /// Jobs run.
  public let jobsRun = Atomic<Int>(0)

  /// Where the loop is on its way to sleep, for ``init(name:ringEntries:completionEntries:sleepHook:)``'s test seam.
  public enum SleepPhase: Sendable {
    /// Nothing to run: about to store `asleep` and look at the inbox once more.
    case beforeAsleep
    /// `asleep` stored, the inbox found empty: about to enter the kernel.
    case beforeKernelWait
  }

  private let sleepHook: (@Sendable (SleepPhase) -> Void)?

  /// Starts a context and its thread. With `ringEntries` > 0 it sets up an
  /// io_uring of that many submission and `completionEntries` completion
  /// entries; when the kernel refuses, the context runs without one
  /// (``ringSetupError`` says why). `sleepHook`, a test seam, runs on the
  /// loop's thread at each ``SleepPhase``, so that tests can hold the loop
  /// exactly there while another thread enqueues.
  public init(
    name: String, ringEntries: Int = IOContext.defaultRingEntries,
    completionEntries: Int = IOContext.defaultCompletionEntries,
    sleepHook: (@Sendable (SleepPhase) -> Void)? = nil
  ) {
    self.name = name
    self.sleepHook = sleepHook
    wakeFD = cur_eventfd()
    precondition(wakeFD >= 0, "eventfd failed: errno \(errno)")
    if ringEntries > 0 {
      let (ring, error) = IOContextRing.make(
        entries: ringEntries, completionEntries: completionEntries, wakeFD: wakeFD)
      self.ring = ring
      ringSetupError = error
    } else {
      ring = nil
      ringSetupError = 0
    }
    ring?.context = self
    let retained = Unmanaged.passRetained(self).toOpaque()
    let result = pthread_create(
      &thread, nil,
      { argument in
        let context = Unmanaged<IOContext>.fromOpaque(argument!).takeRetainedValue()
        context.runLoop()
        return nil
      }, retained)
    precondition(result == 0, "pthread_create failed: \(result)")
  }

  /// The context whose loop runs the calling thread, if any.
  public static var current: IOContext? {
    guard let pointer = pthread_getspecific(currentKey) else { return nil }
    return Unmanaged<IOContext>.fromOpaque(pointer).takeUnretainedValue()
  }

  /// Whether the caller runs on this context's thread.
  public var isCurrent: Bool {
    pthread_getspecific(Self.currentKey) == Unmanaged.passUnretained(self).toOpaque()
  }

  private static let currentKey: pthread_key_t = {
    var key = pthread_key_t()
    precondition(pthread_key_create(&key, nil) == 0)
    return key
  }()

  // MARK: SerialExecutor

  public func enqueue(_ job: consuming ExecutorJob) {
    let job = UnownedJob(job)
    if isCurrent {
      ready.append(job)
      return
    }
    let appended = inbox.withLock { jobs in
      guard !ended.load(ordering: .sequentiallyConsistent) else { return false }
      jobs.append(job)
      return true
    }
    guard appended else {
      // The loop has ended (``shutdown()``): a late job, such as an actor
      // bound to this context being let go by a task, runs on the global
      // executor; the actor's own queue still serialises it.
      globalConcurrentExecutor.enqueue(ExecutorJob(job))
      return
    }
    // After the append: a loop that stored `asleep` before our swap looks at
    // the inbox after it (and finds the job) or sleeps and gets the signal.
    if state.exchange(LoopState.awake.rawValue, ordering: .sequentiallyConsistent)
      == LoopState.asleep.rawValue
    {
      signal()
    }
    foreignEnqueues.add(1, ordering: .sequentiallyConsistent)
  }

  public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
    UnownedSerialExecutor(ordinary: self)
  }

  /// Runs `job`, parked on a ``ContextWaiter``'s `executor`, in the loop's
  /// next pass (never inside the job that signals it). Call on this
  /// context's thread.
  func resume(_ job: UnownedJob, on executor: UnownedSerialExecutor) {
    resumed.append((job, executor))
  }

  /// This context as a task executor: a task that prefers it (see
  /// ``BlockActor/run(_:)``) runs its nonisolated code here too, so a
  /// continuation resumed on this thread (an I/O completion, a lock handed
  /// over) comes back without a trip through Swift's shared pool.
  public func asUnownedTaskExecutor() -> UnownedTaskExecutor {
    UnownedTaskExecutor(ordinary: self)
  }

  public func checkIsolated() {
    precondition(isCurrent, "not on I/O context \(name)'s thread")
  }

  // MARK: Lifetime

  /// Counts an operation whose completion will enqueue a job from another
  /// thread (a thread-pool call): ``shutdown()`` waits for it.
  public func beginOutstanding() { outstanding.add(1, ordering: .relaxed) }

  /// Ends an operation counted by ``beginOutstanding()``.
  public func endOutstanding() { outstanding.subtract(1, ordering: .relaxed) }

  /// Stops the loop once it has nothing left to run, no request in flight on
  /// its ring and no outstanding operation, and waits for its thread to end.
  /// Call it from another thread, once; the context must not be used after.
  public func shutdown() {
    precondition(!isCurrent, "an I/O context cannot shut itself down")
    stopping.store(true, ordering: .sequentiallyConsistent)
    signal()
    pthread_join(thread, nil)
  }

  /// Whether ``shutdown()`` was called.
  public var isStopping: Bool { stopping.load(ordering: .sequentiallyConsistent) }

  /// Whether the loop's thread has ended.
  public var hasEnded: Bool { ended.load(ordering: .sequentiallyConsistent) }

  // MARK: The loop

  private func runLoop() {
    pthread_setspecific(Self.currentKey, Unmanaged.passUnretained(self).toOpaque())
    cur_set_thread_name(String(decoding: name.utf8.prefix(15), as: UTF8.self))
    let executor = asUnownedSerialExecutor()
    while true {
      takeInbox()
      if !resumed.isEmpty {
        // Each runs a waiter's `value()` and hops back to its actor on this
        // context: it lands in `ready`, run just below.
        swap(&resumed, &resuming)
        for entry in resuming { entry.job.runSynchronously(on: entry.executor) }
        jobsRun.add(resuming.count, ordering: .relaxed)
        resuming.removeAll(keepingCapacity: true)
      }
      if !ready.isEmpty {
        swap(&ready, &running)
        for job in running { job.runSynchronously(on: executor) }
        jobsRun.add(running.count, ordering: .relaxed)
        running.removeAll(keepingCapacity: true)
      }
      // One io_uring_enter for everything this turn prepared, then the
      // completions that are there: their requests resume in the next turn.
      let reaped = ring?.submitAndReap() ?? 0
      if !ready.isEmpty || !resumed.isEmpty || reaped > 0 { continue }
      if stopping.load(ordering: .sequentiallyConsistent) && isQuiescent() { break }
      sleep()
    }
    ring?.destroy()
    close(wakeFD)
    pthread_setspecific(Self.currentKey, nil)
    // Jobs that arrived after the last look go to the global executor, as
    // later ones will (see ``enqueue(_:)``).
    let late = inbox.withLock { jobs in
      ended.store(true, ordering: .sequentiallyConsistent)
      defer { jobs.removeAll() }
      return jobs
    }
    for job in late { globalConcurrentExecutor.enqueue(ExecutorJob(job)) }
  }

  private func takeInbox() {
    inbox.withLock { jobs in
      guard !jobs.isEmpty else { return }
      ready.append(contentsOf: jobs)
      jobs.removeAll(keepingCapacity: true)
    }
  }

  private func isQuiescent() -> Bool {
    ready.isEmpty && resumed.isEmpty && inbox.withLock { $0.isEmpty } && (ring?.inFlight ?? 0) == 0
      && outstanding.load(ordering: .sequentiallyConsistent) == 0
  }

  /// Sleeps until a completion or an enqueue from another thread. The state
  /// goes to `asleep` before the inbox is looked at a last time, so an
  /// enqueuer that appended before that look is seen, and one that appends
  /// after it finds `asleep` and signals the eventfd.
  private func sleep() {
    sleepHook?(.beforeAsleep)
    state.store(LoopState.asleep.rawValue, ordering: .sequentiallyConsistent)
    let hasWork = inbox.withLock { !$0.isEmpty }
    if !hasWork {
      sleepHook?(.beforeKernelWait)
      if let ring {
        ring.waitForCompletion()
      } else {
        var event = pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)
        _ = poll(&event, 1, -1)
        drainWakeFD()
      }
    }
    state.store(LoopState.awake.rawValue, ordering: .sequentiallyConsistent)
  }

  private func signal() {
    wakeups.add(1, ordering: .relaxed)
    cur_eventfd_signal(wakeFD)
  }

  /// Resets the eventfd's counter (it is non-blocking).
  func drainWakeFD() {
    cur_eventfd_drain(wakeFD)
  }
}
