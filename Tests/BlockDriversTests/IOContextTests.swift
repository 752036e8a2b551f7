import BlockCore
import BlockLoop
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// An actor that runs on a given I/O context: what a graph's code looks like
/// to the context.
actor ContextProbe {
  let context: IOContext
  private(set) var touches = 0

  init(_ context: IOContext) { self.context = context }

  nonisolated var unownedExecutor: UnownedSerialExecutor { context.asUnownedSerialExecutor() }

  func touch() { touches += 1 }

  /// A touch that calls `ran` on the context's thread, so that a waiter
  /// measures the loop and not the shared pool the caller resumes on.
  func touch(then ran: @Sendable () -> Void) {
    touches += 1
    ran()
  }

  /// preadv of `count` bytes at `offset` (-1: the file position) through the
  /// context's ring: the result and the bytes read.
  func read(_ fd: Int32, count: Int, at offset: Int64) async -> (result: Int32, bytes: [UInt8]) {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 4096)
    defer { buffer.deallocate() }
    let result = await context.ring!.transfer(
      fd: fd, offset: offset, write: false, segments: [buffer][...])
    return (result, Array(buffer.prefix(max(0, Int(result)))))
  }

  /// Starts `count` reads of `size` bytes in one turn of the loop (tasks on
  /// this actor, all ready at once) and returns their results in order.
  func readInOneTurn(_ fd: Int32, count: Int, size: Int) async -> [(result: Int32, bytes: [UInt8])]
  {
    let tasks = (0..<count).map { index in
      Task { await self.read(fd, count: size, at: Int64(index * size)) }
    }
    var results: [(result: Int32, bytes: [UInt8])] = []
    for task in tasks { results.append(await task.value) }
    return results
  }

  /// Starts a read on this context and returns its task once the read's
  /// submission is prepared (the task may first run elsewhere and hop here).
  func startRead(_ fd: Int32, count: Int) async -> Task<(result: Int32, bytes: [UInt8]), Never> {
    let inFlight = context.ring!.inFlight
    let task = Task { await self.read(fd, count: count, at: -1) }
    while context.ring!.inFlight == inFlight { await Task.yield() }
    return task
  }

  func ringStatistics() -> (fullQueueFlushes: Int, slotWaits: Int, peak: Int, inFlight: Int) {
    let ring = context.ring!
    return (ring.fullQueueFlushes, ring.slotWaits, ring.peakInFlight, ring.inFlight)
  }
}

/// Runs `body` on a thread of its own (not the cooperative pool), so that it
/// may block, and returns when it has.
func onThread(_ body: @escaping @Sendable () -> Void) async {
  await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
    let thread = Thread {
      body()
      continuation.resume()
    }
    thread.start()
  }
}

/// Runs `body` on a thread of its own and returns its result.
func onThreadReturning<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
  await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
    let thread = Thread { continuation.resume(returning: body()) }
    thread.start()
  }
}

/// A test's own scratch file of `bytes`, open read-write; removed on close.
func scratchFile(_ bytes: [UInt8]) throws -> Int32 {
  var template = Array("/tmp/spindle-iocontext-XXXXXX".utf8CString)
  let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
  try #require(fd >= 0)
  template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
  let written = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
  try #require(written == bytes.count)
  return fd
}

/// Runs `body` with the read and write ends of a new pipe, closed when it
/// returns: a read of the read end through a ring completes only when the test
/// writes, so the test decides when a request in flight finishes.
func withPipe(_ body: (_ readEnd: Int32, _ writeEnd: Int32) async throws -> Void) async throws {
  var fds: [Int32] = [0, 0]
  try #require(pipe(&fds) == 0)
  defer { for fd in fds { close(fd) } }
  try await body(fds[0], fds[1])
}

/// The block layer's event loop: wake-ups, batching into a full submission
/// queue, more requests than the completion queue holds, the fallback without
/// a ring, and shutdown.
@Suite("I/O context")
struct IOContextTests {
  enum Kind: String, CaseIterable, Sendable {
    case ring
    case noRing = "no ring"
  }

  static func makeContext(
    _ kind: Kind, sleepHook: (@Sendable (IOContext.SleepPhase) -> Void)? = nil
  )
    -> IOContext
  {
    IOContext(name: "test-loop", ringEntries: kind == .ring ? 8 : 0, sleepHook: sleepHook)
  }

  @Test("enqueues from other threads wake the sleeping loop, every time", arguments: Kind.allCases)
  func foreignEnqueuesWake(kind: Kind) async {
    let context = Self.makeContext(kind)
    let probe = ContextProbe(context)
    for _ in 0..<3000 { await probe.touch() }
    // Every touch ran (a lost wake-up would leave one waiting for ever).
    // How many of them found the loop asleep depends on the machine's load
    // (under AddressSanitizer in a full run, none did once), so the signal
    // path itself is the subject of the next test, which holds the loop at
    // each step of going to sleep.
    #expect(await probe.touches == 3000)
    await onThread { context.shutdown() }
    #expect(context.hasEnded)
  }

  /// Holds the loop at `phase` while another thread enqueues a job (the
  /// enqueue has fully returned before the loop goes on), many times.
  /// At `.beforeAsleep` the enqueuer finds the loop awake and does not
  /// signal: only the loop's last look at the inbox finds the job. At
  /// `.beforeKernelWait` the loop has looked already: only the enqueuer's
  /// signal wakes it.
  @Test(
    "an enqueue racing with the loop going to sleep is never lost",
    arguments: Kind.allCases, [IOContext.SleepPhase.beforeAsleep, .beforeKernelWait])
  func enqueueWhileGoingToSleep(kind: Kind, phase: IOContext.SleepPhase) async {
    // The hook holds the loop only once it has run `target` touches (counted
    // on the loop's own thread), so a loop that goes to sleep before the
    // test's first job has even reached it is not held with nothing to do.
    let completed = Atomic<Int>(0)
    let target = Atomic<Int>(1)
    let reached = DispatchSemaphore(value: 0)
    let proceed = DispatchSemaphore(value: 0)
    let context = Self.makeContext(kind) { at in
      let goal = target.load(ordering: .sequentiallyConsistent)
      guard at == phase, goal > 0, completed.load(ordering: .sequentiallyConsistent) == goal,
        target.compareExchange(expected: goal, desired: 0, ordering: .sequentiallyConsistent)
          .exchanged
      else { return }
      reached.signal()
      proceed.wait()
    }
    let probe = ContextProbe(context)
    let iterations = 100
    let lost = await onThreadReturning { () -> Int in
      // The first turn: after it the loop goes to sleep and stops at `phase`.
      Task { @Sendable in
        await probe.touch { completed.add(1, ordering: .sequentiallyConsistent) }
      }
      for iteration in 0..<iterations {
        if reached.wait(timeout: .now() + 120) == .timedOut { return iterations - iteration }
        // The loop is held, with an empty inbox. Enqueue one job, and arm the
        // hook for the loop's next way to sleep, after it has run the job.
        let before = context.foreignEnqueues.load(ordering: .sequentiallyConsistent)
        target.store(
          iteration < iterations - 1 ? iteration + 2 : 0, ordering: .sequentiallyConsistent)
        let ran = DispatchSemaphore(value: 0)
        Task { @Sendable in
          await probe.touch {
            completed.add(1, ordering: .sequentiallyConsistent)
            ran.signal()
          }
        }
        // The job is in the inbox and the enqueuer has swapped the state.
        while context.foreignEnqueues.load(ordering: .sequentiallyConsistent) == before {
          sched_yield()
        }
        proceed.signal()
        // (A lost job never runs. The job's task has started: the bound
        // measures only the loop, which signals from its own thread.)
        if ran.wait(timeout: .now() + 120) == .timedOut {
          // Lost: release the hook for good so that the context can end.
          target.store(0, ordering: .sequentiallyConsistent)
          proceed.signal()
          return iterations - iteration
        }
      }
      return 0
    }
    #expect(lost == 0, "a job enqueued at \(phase) was not run")
    guard lost == 0 else { return }
    #expect(await probe.touches == iterations + 1)
    await onThread { context.shutdown() }
  }

  @Test("a completion and a foreign enqueue arriving at once both resume")
  func completionAndEnqueueAtOnce() async throws {
    let context = Self.makeContext(.ring)
    guard context.ring != nil else { return }
    let probe = ContextProbe(context)
    try await withPipe { readEnd, writeEnd in
      for iteration in 0..<300 {
        let read = await probe.startRead(readEnd, count: 1)
        let touched = await probe.touches
        // Two threads released together: one completes the read, one enqueues.
        let barrier = UnsafeMutablePointer<pthread_barrier_t>.allocate(capacity: 1)
        pthread_barrier_init(barrier, nil, 2)
        let shared = UnsafeSendable(barrier)
        async let writer: Void = onThread {
          pthread_barrier_wait(shared.value)
          var byte = UInt8(truncatingIfNeeded: iteration)
          _ = write(writeEnd, &byte, 1)
        }
        async let enqueuer: Void = onThread {
          pthread_barrier_wait(shared.value)
          let done = DispatchSemaphore(value: 0)
          Task { @Sendable in
            await probe.touch()
            done.signal()
          }
          done.wait()
        }
        _ = await (writer, enqueuer)
        let result = await read.value
        #expect(result.result == 1 && result.bytes == [UInt8(truncatingIfNeeded: iteration)])
        #expect(await probe.touches == touched + 1)
        pthread_barrier_destroy(barrier)
        barrier.deallocate()
      }
      await onThread { context.shutdown() }
    }
  }

  @Test("requests prepared in one turn beyond the submission queue flush it and go on")
  func fullSubmissionQueue() async throws {
    let context = IOContext(name: "test-sq", ringEntries: 2, completionEntries: 64)
    guard context.ring != nil else { return }
    let probe = ContextProbe(context)
    let data = (0..<(20 * 512)).map { UInt8(truncatingIfNeeded: $0 / 512 &+ $0) }
    let fd = try scratchFile(data)
    defer { close(fd) }
    let results = await probe.readInOneTurn(fd, count: 20, size: 512)
    for (index, result) in results.enumerated() {
      #expect(result.result == 512)
      #expect(result.bytes == Array(data[(index * 512)..<((index + 1) * 512)]))
    }
    let statistics = await probe.ringStatistics()
    #expect(statistics.fullQueueFlushes > 0)
    #expect(statistics.inFlight == 0)
    await onThread { context.shutdown() }
  }

  @Test("more requests than the completion queue holds wait for a slot, none is lost")
  func moreRequestsThanCompletionEntries() async throws {
    let context = IOContext(name: "test-cq", ringEntries: 2, completionEntries: 4)
    guard let ring = context.ring else { return }
    #expect(ring.capacity == 3)
    let probe = ContextProbe(context)
    let data = (0..<(40 * 512)).map { UInt8(truncatingIfNeeded: $0 / 512 &* 3 &+ $0) }
    let fd = try scratchFile(data)
    defer { close(fd) }
    let results = await probe.readInOneTurn(fd, count: 40, size: 512)
    for (index, result) in results.enumerated() {
      #expect(result.result == 512)
      #expect(result.bytes == Array(data[(index * 512)..<((index + 1) * 512)]))
    }
    let statistics = await probe.ringStatistics()
    #expect(statistics.slotWaits > 0)
    #expect(statistics.peak <= 3)
    #expect(statistics.inFlight == 0)
    await onThread { context.shutdown() }
  }

  @Test("a ring the kernel refuses leaves a context without one that still runs its jobs")
  func ringSetupFailure() async {
    // More entries than IORING_MAX_ENTRIES: io_uring_setup fails with EINVAL.
    let context = IOContext(name: "test-noring", ringEntries: 1 << 30)
    #expect(context.ring == nil)
    #expect(context.ringSetupError == EINVAL)
    let probe = ContextProbe(context)
    for _ in 0..<10 { await probe.touch() }
    #expect(await probe.touches == 10)
    await onThread { context.shutdown() }
  }

  @Test("shutdown waits for the requests in flight on the ring")
  func shutdownWithRequestInFlight() async throws {
    let context = Self.makeContext(.ring)
    guard context.ring != nil else { return }
    let probe = ContextProbe(context)
    try await withPipe { readEnd, writeEnd in
      async let read = probe.read(readEnd, count: 3, at: -1)
      while await probe.ringStatistics().inFlight == 0 { await Task.yield() }
      let stopped = DispatchSemaphore(value: 0)
      Thread {
        context.shutdown()
        stopped.signal()
      }.start()
      await onThread {
        while !context.isStopping { sched_yield() }
        _ = write(writeEnd, "abc", 3)
      }
      let result = await read
      #expect(result.result == 3 && result.bytes == Array("abc".utf8))
      await onThread { stopped.wait() }
      #expect(context.hasEnded)
    }
  }

  @Test(
    "inside BlockActor.run nonisolated code runs on the main context's thread, outside it on Swift's pool"
  )
  func taskExecutorPreference() async {
    #expect(await Self.runsOnMainContext() == false)
    let inside = await BlockActor.run { await Self.runsOnMainContext() }
    #expect(inside)
    #expect(await Self.runsOnMainContext() == false)
  }

  /// Whether a nonisolated async function runs on ``IOContext/main``'s thread.
  private nonisolated static func runsOnMainContext() async -> Bool {
    IOContext.main.isCurrent
  }
}

/// A value sent across threads by a test that synchronises its use itself.
struct UnsafeSendable<Value>: @unchecked Sendable {
  let value: Value
  init(_ value: Value) { self.value = value }
}
