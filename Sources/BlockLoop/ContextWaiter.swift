/// A place where one task at a time waits, on an ``IOContext``, for a value
/// that code on the same context's thread provides: an I/O completion the
/// loop reaps, a lock handed over.
///
/// A Swift continuation resumes its task through the global executor, which
/// for a task isolated to the context is a switch to Swift's shared pool and
/// one back. A waiter is an actor whose executor keeps the job of the task
/// that hops onto it (``value()``) until ``signal(_:)``; the context's loop
/// then runs that job on its own thread, and the task hops back to its
/// actor on the same thread, in the loop's next pass: no other thread and
/// no system call, as a coroutine woken in QEMU's AioContext.
///
/// Contract: ``value()`` and ``signal(_:)`` are called on the context's
/// thread only; each ``signal(_:)`` is consumed by exactly one ``value()``
/// (in either order), and one task at a time waits. A waiter dropped while
/// a task waits on it leaves that task suspended for ever.
public actor ContextWaiter {
  private let parking: ParkingExecutor

  /// A waiter whose tasks resume on `context`.
  public init(context: IOContext) {
    parking = ParkingExecutor(context: context)
  }

  public nonisolated var unownedExecutor: UnownedSerialExecutor {
    parking.asUnownedSerialExecutor()
  }

  /// Waits for the next ``signal(_:)`` (or takes one given already) and
  /// returns its value. Awaited from code running on the context.
  public func value() -> Int {
    parking.take()
  }

  /// Provides `value` to the task waiting in ``value()``, which resumes in
  /// the loop's next pass, or to the next call of it. Call on the context's
  /// thread.
  public nonisolated func signal(_ value: Int) {
    parking.signal(value)
  }
}

/// The executor behind a ``ContextWaiter``: it holds the job a waiting task
/// enqueues on it and gives it to the context's loop when signalled.
///
/// `@unchecked Sendable`: used only on the context's thread (checked).
final class ParkingExecutor: SerialExecutor, @unchecked Sendable {
  private unowned let context: IOContext
  private var parked: UnownedJob?
  private var signalled = false
  private var pending = 0

  init(context: IOContext) {
    self.context = context
  }

  func enqueue(_ job: consuming ExecutorJob) {
    let job = UnownedJob(job)
    precondition(context.isCurrent, "a context waiter used off its context's thread")
    if signalled {
      context.resume(job, on: asUnownedSerialExecutor())
    } else {
      precondition(parked == nil, "two tasks wait on one context waiter")
      parked = job
    }
  }

  func asUnownedSerialExecutor() -> UnownedSerialExecutor {
    UnownedSerialExecutor(ordinary: self)
  }

  func checkIsolated() {
    precondition(context.isCurrent, "not on I/O context \(context.name)'s thread")
  }

  func signal(_ value: Int) {
    precondition(context.isCurrent, "a context waiter signalled off its context's thread")
    precondition(!signalled, "a context waiter signalled twice")
    pending = value
    signalled = true
    if let job = parked {
      parked = nil
      context.resume(job, on: asUnownedSerialExecutor())
    }
  }

  func take() -> Int {
    precondition(signalled, "a context waiter resumed without a signal")
    signalled = false
    return pending
  }
}
