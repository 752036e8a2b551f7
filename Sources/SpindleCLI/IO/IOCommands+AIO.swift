import BlockCore

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Asynchronous qemu-io requests (`aio_read`, `aio_write`) and when their
/// reports appear.
///
/// qemu-io submits the request and returns; the completion callback prints the
/// report later, from the event loop: while a synchronous command waits for its
/// own request, in `aio_flush`, between commands read from standard input, or
/// when the tool exits. Callbacks that became ready together run newest first
/// (QEMU queues bottom halves last-in first-out).
///
/// Spindle models this with one task per request on ``BlockActor``, started
/// immediately (as QEMU enters the request's coroutine): it runs until it
/// first waits, then continues whenever the command loop, which also runs on
/// ``BlockActor``, suspends, exactly where QEMU's event loop would run: a
/// synchronous command whose request really waits (a file's I/O threads),
/// `aio_flush`, reading the next line, `sleep`, closing. Finished requests
/// leave their report here; ``deliver()`` prints the reports of the finished
/// ones, newest first, and is called at those points.
@BlockActor
final class AIOQueue {
  private let console: Console
  private var nextSequence = 0
  private var running: [Int: Task<Void, Never>] = [:]
  private var finished: [(sequence: Int, report: String)] = []
  /// Reports of requests that finished before ``submit(_:)`` returned.
  private var held: [Int: String] = [:]
  private var idleHandlers: [@BlockActor () -> Void] = []
  /// Whether ``drain()`` runs: reports are printed as requests finish.
  private var draining = false
  /// Where ``drain()`` waits for the last request to finish.
  private let idle = BlockWaitQueue()

  init(console: Console) {
    self.console = console
  }

  /// Starts a request whose completion produces `body`'s report text.
  ///
  /// As QEMU enters a request's coroutine at once, the request runs here
  /// until it first waits (a file's I/O threads, a blkdebug breakpoint), so
  /// it is in flight before the next command and what it prints on the way
  /// comes first.
  func submit(_ body: @escaping @BlockActor @Sendable () async -> String) {
    let sequence = nextSequence
    nextSequence += 1
    let task: Task<Void, Never>
    if #available(macOS 26, *) {
      task = Task.immediate { @BlockActor in await self.run(sequence, body) }
    } else {
      task = Task { @BlockActor in await self.run(sequence, body) }
    }
    if let report = held.removeValue(forKey: sequence) {
      // The request finished without waiting. QEMU then reports it from a
      // bottom half, when its event loop next runs: a task that can only
      // start when the command loop suspends does the same.
      running[sequence] = Task { @BlockActor in
        self.finished.append((sequence, report))
        self.finish(sequence)
      }
    } else {
      running[sequence] = task
    }
  }

  private func run(_ sequence: Int, _ body: @BlockActor @Sendable () async -> String) async {
    let report = await body()
    guard running[sequence] != nil else {
      held[sequence] = report
      return
    }
    finished.append((sequence, report))
    finish(sequence)
    if draining { deliver() }
  }

  private func finish(_ sequence: Int) {
    running[sequence] = nil
    if running.isEmpty { notifyIdle() }
  }

  /// Whether a request is in flight.
  var isBusy: Bool { !running.isEmpty }

  /// Calls `handler` once when no request is in flight any more.
  func whenIdle(_ handler: @escaping @BlockActor () -> Void) {
    idleHandlers.append(handler)
  }

  private func notifyIdle() {
    idle.wakeAll()
    let handlers = idleHandlers
    idleHandlers = []
    for handler in handlers { handler() }
  }

  /// Prints the reports of finished requests, newest first.
  func deliver() {
    guard !finished.isEmpty else { return }
    for entry in finished.sorted(by: { $0.sequence > $1.sequence }) {
      console.write(entry.report)
    }
    finished.removeAll()
  }

  /// Waits for every request, printing reports as requests finish (QEMU's
  /// `blk_drain_all` runs each completion callback as its request ends):
  /// what finished before is printed first (newest first, as `deliver()`),
  /// then each request's report as it finishes, so one that another waited
  /// for (a qcow2 allocation the second write depends on) prints first.
  func drain() async {
    deliver()
    draining = true
    defer { draining = false }
    while !running.isEmpty { await idle.wait() }
    deliver()
  }

}

extension IOSession {
  /// `aio_read [-Ciqv] [-P pattern] off len [len..]`.
  func aioReadCommand(_ words: [String]) -> Int32 {
    let command = findCommand("aio_read")!
    var parser = options(words, "CP:iqv")
    var machineReadable = false
    var quiet = false
    var dump = false
    var pattern: UInt8?
    while let result = parser.next() {
      switch result {
      case .option("C"): machineReadable = true
      case .option("P"):
        guard let byte = self.pattern(parser.optarg!) else { return -EINVAL }
        pattern = byte
      case .option("i"):
        console.write("injecting invalid read request\n")
        return 0
      case .option("q"): quiet = true
      case .option("v"): dump = true
      default:
        usage(command)
        return -EINVAL
      }
    }
    guard let (offset, buffer) = vectorRequest(parser.operands, command, fill: 0xab) else {
      return -EINVAL
    }
    let backend = activeBackend
    let start = MonotonicInstant.now()
    aio.submit { [pattern, quiet, dump, machineReadable] in
      let size = Int64(buffer.count)
      do {
        try await backend.read(at: offset, into: buffer.vector)
      } catch {
        return "readv failed: \(errorText(error))\n"
      }
      let elapsed = MonotonicInstant.now().since(start)
      var text = ""
      if let pattern, !buffer.matches(pattern) {
        text += "Pattern verification failed at offset \(offset), \(size) bytes\n"
      }
      if quiet { return text }
      if dump { text += buffer.withUnsafeBytes { hexdump($0, offset: offset) } }
      return text
        + ioReport(
          "read", elapsed: elapsed, offset: offset, count: size, total: size, ops: 1,
          machineReadable: machineReadable)
    }
    return 0
  }

  /// `aio_write [-Cfiquz] [-P pattern] off len [len..]`.
  ///
  /// As in qemu-io 7.2, `-P` does not count as a pattern for the `-z` check,
  /// and a zero-write's report measures from the clock's origin (qemu-io never
  /// starts the stopwatch for `-z`).
  func aioWriteCommand(_ words: [String]) -> Int32 {
    let command = findCommand("aio_write")!
    var parser = options(words, "CfiP:quz")
    var machineReadable = false
    var quiet = false
    var zero = false
    var flags: RequestFlags = []
    var pattern: UInt8 = 0xcd
    while let result = parser.next() {
      switch result {
      case .option("C"): machineReadable = true
      case .option("f"): flags.insert(.fua)
      case .option("q"): quiet = true
      case .option("u"): flags.insert(.mayUnmap)
      case .option("P"):
        guard let byte = self.pattern(parser.optarg!) else { return -EINVAL }
        pattern = byte
      case .option("i"):
        console.write("injecting invalid write request\n")
        return 0
      case .option("z"): zero = true
      default:
        usage(command)
        return -EINVAL
      }
    }
    let operands = parser.operands
    guard operands.count >= 2 else {
      usage(command)
      return -EINVAL
    }
    if zero && operands.count != 2 {
      console.write("-z supports only a single length parameter\n")
      return -EINVAL
    }
    if flags.contains(.mayUnmap) && !zero {
      console.write("-u requires -z to be specified\n")
      return -EINVAL
    }
    guard let offset = number(operands.first!) else { return -EINVAL }
    let backend = activeBackend
    let isQuiet = quiet
    let isMachineReadable = machineReadable
    let report = { @Sendable (size: Int64, elapsed: MonotonicInstant) -> String in
      isQuiet
        ? ""
        : ioReport(
          "wrote", elapsed: elapsed, offset: offset, count: size, total: size, ops: 1,
          machineReadable: isMachineReadable)
    }
    if zero {
      guard let count = number(operands.last!) else { return -EINVAL }
      aio.submit { [flags] in
        do {
          try await backend.writeZeroes(at: offset, count: count, flags: flags)
        } catch {
          return "aio_write failed: \(errorText(error))\n"
        }
        return report(count, MonotonicInstant.now().since(.origin))
      }
      return 0
    }
    guard let buffer = vectorBuffer(operands.dropFirst(), fill: pattern) else { return -EINVAL }
    let start = MonotonicInstant.now()
    aio.submit { [flags] in
      do {
        try await backend.write(at: offset, from: buffer.vector, flags: flags)
      } catch {
        return "aio_write failed: \(errorText(error))\n"
      }
      return report(Int64(buffer.count), MonotonicInstant.now().since(start))
    }
    return 0
  }

  /// `aio_flush`: waits for every asynchronous request.
  func aioFlushCommand() async -> Int32 {
    await aio.drain()
    return 0
  }
}
