import BlockLoop
import Foundation
import Testing

/// An actor on a given context that waits on ``ContextWaiter``s and signals
/// them, counting where its code ran.
actor WaiterProbe {
  let context: IOContext
  private(set) var offThread = 0

  init(_ context: IOContext) { self.context = context }

  nonisolated var unownedExecutor: UnownedSerialExecutor { context.asUnownedSerialExecutor() }

  /// `count` rounds of ping-pong between this task and another on the
  /// context, each waiting on a ``ContextWaiter`` the other signals; returns
  /// the values the other task received, in order.
  func pingPong(rounds count: Int) async -> [Int] {
    let ping = ContextWaiter(context: context)
    let pong = ContextWaiter(context: context)
    let other = Task { () -> [Int] in
      var received: [Int] = []
      for _ in 0..<count {
        let value = await ping.value()
        if !self.context.isCurrent { self.offThread += 1 }
        received.append(value)
        pong.signal(value)
      }
      return received
    }
    for round in 0..<count {
      ping.signal(round)
      let echoed = await pong.value()
      if !context.isCurrent || echoed != round { offThread += 1 }
    }
    return await other.value
  }

  /// A signal given before anyone waits is taken by the next wait.
  func signalFirst(_ value: Int) async -> Int {
    let waiter = ContextWaiter(context: context)
    waiter.signal(value)
    let taken = await waiter.value()
    if !context.isCurrent { offThread += 1 }
    return taken
  }
}

@Suite("context waiter")
struct ContextWaiterTests {
  @Test("a waiting task gets the signalled value and resumes on the context without leaving it")
  func resumesOnTheContext() async {
    let context = IOContext(name: "waiter-test")
    let probe = WaiterProbe(context)
    // Warm up: the probe's first call from this (pool) task is foreign.
    _ = await probe.signalFirst(7)
    let before = context.foreignEnqueues.load(ordering: .sequentiallyConsistent)
    let values = await probe.pingPong(rounds: 500)
    let after = context.foreignEnqueues.load(ordering: .sequentiallyConsistent)
    #expect(values == Array(0..<500))
    #expect(await probe.offThread == 0)
    // The 500 waits came back without a job enqueued from another thread
    // (a continuation resumes through Swift's pool and enqueues from there).
    // The only foreign enqueues are this test's own calls into the probe.
    #expect(after - before <= 2)
    await onThread { context.shutdown() }
  }

  @Test("a signal before the wait is kept for it")
  func signalBeforeWait() async {
    let context = IOContext(name: "waiter-test")
    let probe = WaiterProbe(context)
    #expect(await probe.signalFirst(42) == 42)
    #expect(await probe.signalFirst(-5) == -5)
    #expect(await probe.offThread == 0)
    await onThread { context.shutdown() }
  }
}
