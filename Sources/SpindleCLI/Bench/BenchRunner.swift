import BlockCore

/// What `bench` runs: QEMU's `BenchData` parameters.
struct BenchParameters: Sendable {
  /// Number of requests (`-c`).
  var count = 75000
  /// Requests in flight (`-d`).
  var depth = 64
  /// Offset of the first request (`-o`).
  var offset: UInt64 = 0
  /// Size of each request (`-s`).
  var bufferSize = 4096
  /// Distance between consecutive requests (`-S`; 0 means the buffer size).
  var step = 0
  /// Write instead of read (`-w`).
  var write = false
  /// The byte written (`--pattern`).
  var pattern: UInt8 = 0
  /// Flush every this many requests, 0 for never (`--flush-interval`).
  var flushInterval = 0
  /// Drain the queue before each flush (default; `--no-drain` turns it off).
  var drainOnFlush = true

  /// The step actually used.
  var effectiveStep: Int { step == 0 ? bufferSize : step }
}

/// Runs a benchmark on a backend with QEMU's `img_bench` semantics, keeping
/// `depth` requests in flight.
///
/// QEMU drives the benchmark from completion callbacks: each completion counts
/// down, may trigger a flush (after draining the queue, or alongside it with
/// `--no-drain`) when the number of requests not yet submitted is a multiple of
/// the flush interval, and submits the next requests. Offsets advance by the
/// step and wrap at the image size.
///
/// Here `depth` worker tasks in a task group on ``BlockActor`` each own one
/// buffer (reused for every request) and loop: take the next offset, await the
/// request, account for its completion. The shared counters live on the actor,
/// so they need no locks; a worker only suspends where the request suspends.
/// Workers that must not submit while a drained flush is pending park until
/// the flush completes; `--no-drain` flushes are handed to one flusher task.
@BlockActor
final class BenchRunner {
  /// A `--no-drain` flush failed (qemu-img words it differently).
  struct FlushFailure: Error {
    let error: any Error
  }

  private let backend: BlockBackend
  private let parameters: BenchParameters
  private let imageSize: UInt64

  /// Requests not yet completed (QEMU's `n`).
  private var remaining: Int
  private var inFlight = 0
  private var nextOffset: UInt64
  /// A drained flush is pending or running: nothing may be submitted.
  private var flushGate = false
  private var parked: [CheckedContinuation<Void, Never>] = []
  /// `--no-drain` flushes requested and not yet started.
  private var pendingFlushes = 0
  private var flusherWaiting: CheckedContinuation<Bool, Never>?
  private var finished = false
  /// When the last request completed (the flush that may follow is not timed,
  /// as in QEMU).
  private(set) var completedAt: ContinuousClock.Instant?

  /// Prepares a run; the image size is read now.
  init(backend: BlockBackend, parameters: BenchParameters) {
    self.backend = backend
    self.parameters = parameters
    self.imageSize = UInt64(max(backend.length, 0))
    self.remaining = parameters.count
    self.nextOffset = parameters.offset
  }

  /// Runs every request; throws the first failure (of a request or a flush).
  func run() async throws {
    guard parameters.count > 0 else { return }
    let workers = min(parameters.depth, parameters.count)
    try await withThrowingTaskGroup(of: Void.self) { group in
      for _ in 0..<workers {
        let buffer = IOVector(
          allocating: parameters.bufferSize, alignment: backend.root.limits.optMemAlignment)
        buffer.fill(parameters.pattern)
        group.addTask { try await self.worker(buffer) }
      }
      if parameters.flushInterval > 0 && !parameters.drainOnFlush {
        group.addTask { try await self.flusher() }
      }
      do {
        try await group.waitForAll()
      } catch {
        group.cancelAll()
        wakeEverything()
        throw error
      }
    }
  }

  private func wakeEverything() {
    finished = true
    let waiting = parked
    parked.removeAll()
    for continuation in waiting { continuation.resume() }
    flusherWaiting?.resume(returning: false)
    flusherWaiting = nil
  }

  /// The offset of the next request. QEMU 7.2 advances it at submission and
  /// wraps it at the image size, so a request may straddle the end and fail
  /// (later QEMU versions wrap at `size - buffer size`).
  private func takeOffset() -> Int64 {
    let offset = nextOffset
    nextOffset &+= UInt64(parameters.effectiveStep)
    // QEMU divides by zero for an empty image; every request fails there anyway.
    if imageSize > 0 { nextOffset %= imageSize }
    return Int64(bitPattern: offset)
  }

  private func worker(_ buffer: IOVector) async throws {
    while true {
      while flushGate && !finished {
        await withCheckedContinuation { parked.append($0) }
      }
      guard !finished, remaining > inFlight else { return }
      try Task.checkCancellation()
      inFlight += 1
      let offset = takeOffset()
      if parameters.write {
        try await backend.write(at: offset, from: buffer)
      } else {
        try await backend.read(at: offset, into: buffer)
      }
      if parameters.flushInterval > 0 {
        // QEMU accounts for a completion only after every request of the
        // current batch was submitted (completions are deferred callbacks),
        // and the flush points depend on that count. Let the other workers
        // submit first; without flushes the order does not matter.
        await Task.yield()
      }
      try await completed()
    }
  }

  /// Accounts for one completed request (QEMU's `bench_cb`).
  private func completed() async throws {
    let notSubmitted = remaining - inFlight
    remaining -= 1
    inFlight -= 1
    if remaining == 0 {
      completedAt = .now
      if parameters.flushInterval == 0 { finished = true }
    }
    let interval = parameters.flushInterval
    guard interval > 0, notSubmitted % interval == 0 else { return }
    if parameters.drainOnFlush {
      flushGate = true
      guard inFlight == 0 else { return }
      // The queue is drained: flush, then let every worker submit again.
      try await backend.flush()
      flushGate = false
      if remaining == 0 { finished = true }
      let waiting = parked
      parked.removeAll()
      for continuation in waiting { continuation.resume() }
    } else {
      pendingFlushes += 1
      if let flusher = flusherWaiting {
        flusherWaiting = nil
        flusher.resume(returning: true)
      }
      if remaining == 0 { finishFlusher() }
    }
  }

  private func finishFlusher() {
    finished = true
    if let flusher = flusherWaiting {
      flusherWaiting = nil
      flusher.resume(returning: false)
    }
  }

  /// Issues `--no-drain` flushes while requests go on.
  private func flusher() async throws {
    while true {
      if pendingFlushes > 0 {
        pendingFlushes -= 1
        do {
          try await backend.flush()
        } catch {
          throw FlushFailure(error: error)
        }
        continue
      }
      if finished { return }
      let more = await withCheckedContinuation { flusherWaiting = $0 }
      if !more && pendingFlushes == 0 { return }
    }
  }
}
