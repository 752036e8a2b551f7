import BlockCore
import BlockDrivers
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

extension IOSession {
  /// `flush`: flushes the image; a failure sets the exit status silently, as
  /// in qemu-io.
  func flushCommand() async -> Int32 {
    do {
      try await activeBackend.flush()
    } catch {
      aio.deliver()
      return -errnoCode(error)
    }
    aio.deliver()
    return 0
  }

  /// `discard [-Cq] off len`.
  func discardCommand(_ words: [String]) async -> Int32 {
    let command = findCommand("discard")!
    var parser = options(words, "Cq")
    var machineReadable = false
    var quiet = false
    while let result = parser.next() {
      switch result {
      case .option("C"): machineReadable = true
      case .option("q"): quiet = true
      default:
        usage(command)
        return -EINVAL
      }
    }
    let operands = Array(parser.operands)
    guard operands.count == 2 else {
      usage(command)
      return -EINVAL
    }
    guard let offset = number(operands[0]), let count = number(operands[1]) else {
      return -EINVAL
    }
    if count > maxRequestBytes {
      console.write("length cannot exceed \(maxRequestBytes), given \(operands[1])\n")
      return -EINVAL
    }
    let start = MonotonicInstant.now()
    var failure: (any Error)?
    do {
      try await activeBackend.discard(at: offset, count: count)
    } catch {
      failure = error
    }
    let elapsed = MonotonicInstant.now().since(start)
    aio.deliver()
    if let failure {
      console.write("discard failed: \(errorText(failure))\n")
      return -errnoCode(failure)
    }
    if !quiet {
      console.write(
        ioReport(
          "discard", elapsed: elapsed, offset: offset, count: count, total: count, ops: 1,
          machineReadable: machineReadable))
    }
    return 0
  }

  /// `truncate [-m prealloc_mode] off`.
  func truncateCommand(_ words: [String]) async -> Int32 {
    let command = findCommand("truncate")!
    var parser = options(words, "m:")
    var preallocation = PreallocationMode.off
    while let result = parser.next() {
      switch result {
      case .option("m"):
        guard let mode = PreallocationMode(rawValue: parser.optarg!) else {
          reporter.error("Invalid preallocation mode '\(parser.optarg!)'")
          return -EINVAL
        }
        preallocation = mode
      default:
        usage(command)
        return -EINVAL
      }
    }
    // Like qemu-io, take the first operand (there may be none) and name the
    // first argument in the error.
    let parsed = parser.operands.first.map { parseQEMUSize($0) } ?? .failure(.invalid)
    let length: Int64
    switch parsed {
    case .success(let size) where size.value <= UInt64(Int64.max):
      if size.hexWithSuffix {
        reporter.warning(
          "Using a multiplier suffix on hex numbers is deprecated: \(parser.operands.first!)")
      }
      length = Int64(size.value)
    case .success:
      console.write(numberErrorText(.range, parser.arguments[1]))
      return -ERANGE
    case .failure(let error):
      console.write(numberErrorText(error, parser.arguments[1]))
      return error == .range ? -ERANGE : -EINVAL
    }
    do {
      try await activeBackend.truncate(to: length, exact: false, preallocation: preallocation)
    } catch {
      aio.deliver()
      reporter.error(errorMessage(error))
      return -errnoCode(error)
    }
    aio.deliver()
    return 0
  }

  /// `help [command]`.
  func helpCommand(_ words: [String]) -> Int32 {
    func oneLine(_ name: String, _ command: IOCommandInfo) -> String {
      "\(name) " + (command.args.map { "\($0) " } ?? "") + "-- \(command.oneline)\n"
    }
    guard words.count >= 2 else {
      for command in commands { console.write(oneLine(command.name, command)) }
      console.write("\nUse 'help commandname' for extended help.\n")
      return 0
    }
    guard let command = findCommand(words[1]) else {
      console.write("command \(words[1]) not found\n")
      return -EINVAL
    }
    console.write(oneLine(words[1], command) + (command.help ?? ""))
    return 0
  }

  /// `quit`.
  func quitCommand() -> Int32 {
    quitRequested = true
    return 0
  }

  /// `sleep ms`: waits (the event loop runs meanwhile, so asynchronous
  /// requests complete and report).
  func sleepCommand(_ words: [String]) async -> Int32 {
    let (milliseconds, complete) = parseCLong(words[1])
    guard milliseconds >= 0, complete else {
      console.write("\(words[1]) is not a valid number\n")
      return -EINVAL
    }
    try? await Task.sleep(for: .milliseconds(milliseconds))
    aio.deliver()
    return 0
  }

  /// `sigraise signal`: raises the signal as qemu-io 7.2 does. The signals
  /// qemu-io blocks or ignores itself (SIGBUS, SIGUSR1, SIGPIPE, SIGALRM,
  /// SIGIO) change nothing; any other acts as the program's startup signal
  /// mask and dispositions say (see ``Spindle/recordStartupSignalState()``),
  /// whatever the Swift runtime did to this thread's mask or to the crash
  /// signals' handlers.
  func sigraiseCommand(_ words: [String]) -> Int32 {
    guard let signal = number(words[1]) else { return -EINVAL }
    if signal > 65 {
      console.write("signal argument '\(words[1])' is too large to be a valid signal\n")
      return -EINVAL
    }
    console.flush()
    if ![7, 10, 13, 14, 29].contains(signal) { raiseAsAtStartup(Int32(signal)) }
    return 0
  }

  /// `abort`: ends the program with SIGABRT, without the Swift runtime's
  /// crash report (qemu-io prints nothing). Like qemu-io's `abort(3)`, it
  /// does not flush: buffered output is lost, as in any crash.
  func abortProgram() -> Int32 {
    _ = signal(SIGABRT, SIG_DFL)
    abort()
  }

  /// `close`.
  func closeCommand() async -> Int32 {
    await closeImage()
    return 0
  }

  /// `open [-rsCnkU] [-t cache] [-d discard] [-i aio] [-o options] [path]`.
  func openCommand(_ words: [String]) async -> Int32 {
    let command = findCommand("open")!
    var parser = options(words, "snCro:ki:t:d:U")
    var spec = ImageSpec()
    spec.sharesWrites = true  // qemu-io opens without BDRV_O_NO_SHARE
    spec.node.discard = .unmap
    spec.node.cache = .writethrough
    var readOnly = false
    while let result = parser.next() {
      switch result {
      case .option("s"): spec.snapshot = true
      case .option("n"): spec.node.cache = .none
      case .option("C"): spec.node.copyOnRead = true
      case .option("r"): readOnly = true
      case .option("k"): spec.aio = combinedAIOMode(spec.aio, "native")
      case .option("t"):
        guard let mode = parseCacheMode(parser.optarg!) else {
          reporter.error("Invalid cache option: \(parser.optarg!)")
          return -EINVAL
        }
        spec.node.cache = mode
      case .option("d"):
        guard let mode = parseDiscardMode(parser.optarg!) else {
          reporter.error("Invalid discard option: \(parser.optarg!)")
          return -EINVAL
        }
        spec.node.discard = mode
      case .option("i"):
        guard isValidAIOMode(parser.optarg!) else {
          reporter.error("Invalid aio option: \(parser.optarg!)")
          return -EINVAL
        }
        spec.aio = combinedAIOMode(spec.aio, parser.optarg!)
      case .option("o"):
        if imageOpts {
          console.write("--image-opts and 'open -o' are mutually exclusive\n")
          return -EINVAL
        }
        mergeOptions(parser.optarg!, into: &spec.options)
      case .option("U"): spec.forceShare = true
      default:
        usage(command)
        return -EINVAL
      }
    }
    spec.node.readOnly = readOnly
    var operands = Array(parser.operands)
    if imageOpts && operands.count == 1 {
      mergeOptions(operands[0], into: &spec.options)
      operands.removeAll()
    }
    guard operands.count <= 1 else {
      usage(command)
      return -EINVAL
    }
    spec.filename = operands.first
    return await openImage(spec) ? 0 : -EINVAL
  }

  /// Parses an option string into `options` (later keys win).
  func mergeOptions(_ text: String, into options: inout DriverOptions) {
    for (key, value) in parseOptionString(text, reporter: reporter).values {
      options[key] = value
    }
  }

  /// Opens an image as qemu-io's `openfile` does, printing errors. Returns
  /// whether the image is open.
  func openImage(_ spec: ImageSpec) async -> Bool {
    if backend != nil {
      reporter.error("file open already, try 'help close'")
      return false
    }
    if spec.forceShare, let share = spec.options["force-share"], share != "on" {
      reporter.error("-U conflicts with image options")
      return false
    }
    var spec = spec
    let console = console
    spec.diagnostics = { console.writeError($0) }
    let reporter = reporter
    spec.errorReport = { reporter.error($0) }
    do {
      backend = try await openBackend(spec)
    } catch {
      let name = spec.filename.map { " device \($0)" } ?? ""
      reporter.error("can't open\(name): \(errorMessage(error))")
      return false
    }
    if let backend, warnsAboutProbedRaw(spec, backend) {
      console.writeError(probedRawWarning(spec.filename!, backend: backend))
    }
    return true
  }
}

/// The text QEMU's `error_get_pretty` would show for an error.
func errorMessage(_ error: any Error) -> String {
  if let error = error as? BlockError { return error.description }
  return "\(error)"
}

/// Raises `number` on the calling thread as a single-threaded C program
/// would have: with the signal blocked or not as at startup, and the default
/// action for the signals whose handlers the Swift runtime replaced (its
/// backtracer: SIGQUIT and the crash signals).
private func raiseAsAtStartup(_ number: Int32) {
  if [SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV].contains(number) {
    _ = signal(number, SIG_DFL)
  }
  var set = sigset_t()
  sigemptyset(&set)
  sigaddset(&set, number)
  var startup = Spindle.startupSignalMask
  let blocked = sigismember(&startup, number) == 1
  pthread_sigmask(blocked ? SIG_BLOCK : SIG_UNBLOCK, &set, nil)
  raise(number)
}
