import BlockCore
import BlockDrivers

/// `spindle bench` / `qemu-img bench`, a qemu-img 7.2 work-alike:
///
///     bench [-c COUNT] [-d DEPTH] [-f FMT] [--flush-interval=FLUSH_INTERVAL] [-i AIO]
///           [-n] [--no-drain] [-o OFFSET] [--pattern=PATTERN] [-q] [-s BUFFER_SIZE]
///           [-S STEP_SIZE] [-t CACHE] [-w] [-U] [--image-opts] FILENAME
///
/// Sends COUNT requests of BUFFER_SIZE bytes, DEPTH at a time, starting at
/// OFFSET and STEP_SIZE apart, and prints how long that took. Options, their
/// checks and messages are those of qemu-img 7.2, including its quirks:
/// `-q` prints everything anyway, `-n` asks for native AIO (not "no cache"),
/// and `--object` is not accepted.
@BlockActor
enum BenchTool: ImageSubcommand {
  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("flush-interval", .required),
    .init("image-opts"), .init("pattern", .required), .init("no-drain"),
    .init("force-share", key: "U"),
  ]

  static func parseAndRun(_ arguments: [String], reporter: Reporter, console: Console)
    async throws -> Int32
  {
    var parser = Getopt(
      arguments: arguments, options: ":hc:d:f:ni:o:qs:S:t:wU", longOptions: longOptions
    ) { _ in }
    var parameters = BenchParameters()
    var spec = ImageSpec()
    spec.node.readOnly = true
    spec.node.cache = .writeback
    var imageOpts = false

    /// qemu-img's `error_exit`: the message, then where to get help.
    /// An integer option read with `qemu_strtoul` and checked against a maximum.
    func integer(_ text: String, max: UInt64, _ message: String) throws -> Int {
      guard case .success(let value) = parseCUnsignedLong(text), value <= max else {
        reporter.error(message)
        throw CommandExit()
      }
      return Int(value)
    }
    /// qemu-img's `cvtnum_full`: a size between `min` and `max`.
    func size(_ text: String, _ name: String, min: Int64, max: Int64) throws -> Int64 {
      let parsed = parseQEMUSize(text)
      if case .success(let value) = parsed, value.hexWithSuffix {
        reporter.warning("Using a multiplier suffix on hex numbers is deprecated: \(text)")
      }
      switch parsed {
      case .success(let value) where value.value <= UInt64(max) && Int64(value.value) >= min:
        return Int64(value.value)
      case .failure(.invalid):
        reporter.error(
          "Invalid \(name) specified. You may use k, M, G, T, P or E suffixes for")
        reporter.error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")
      case .success, .failure(.range):
        reporter.error("Invalid \(name) specified. Must be between \(min) and \(max).")
      }
      throw CommandExit()
    }

    while let result = parser.next() {
      let argument = parser.optarg ?? ""
      switch result {
      case .missingArgument:
        throw reporter.usageError(
          "missing argument for option '\(parser.arguments[parser.optind - 1])'")
      case .invalid:
        throw reporter.usageError("unrecognized option '\(parser.arguments[parser.optind - 1])'")
      case .option("h"):
        console.write(ImageTool.help)
        return 0
      case .option("c"):
        parameters.count = try integer(
          argument, max: UInt64(Int32.max), "Invalid request count specified")
      case .option("d"):
        // qemu-img accepts 0 and then waits forever; Spindle refuses it.
        parameters.depth = try integer(
          argument, max: UInt64(Int32.max), "Invalid queue depth specified")
        if parameters.depth == 0 {
          reporter.error("Invalid queue depth specified")
          throw CommandExit()
        }
      case .option("f"): spec.format = argument
      case .option("n"): spec.aio = combinedAIOMode(spec.aio, "native")
      case .option("i"):
        guard isValidAIOMode(argument) else {
          reporter.error("Invalid aio option: \(argument)")
          throw CommandExit()
        }
        spec.aio = combinedAIOMode(spec.aio, argument)
      case .option("o"):
        parameters.offset = UInt64(try size(argument, "offset", min: 0, max: Int64.max))
      case .option("q"): break  // qemu-img 7.2 ignores -q here.
      case .option("s"):
        parameters.bufferSize = Int(
          try size(argument, "buffer size", min: 0, max: Int64(Int32.max)))
      case .option("S"):
        parameters.step = Int(try size(argument, "step_size", min: 0, max: Int64(Int32.max)))
      case .option("t"):
        guard let mode = parseCacheMode(argument) else {
          reporter.error("Invalid cache mode")
          throw CommandExit()
        }
        spec.node.cache = mode
      case .option("w"):
        spec.node.readOnly = false
        parameters.write = true
      case .option("U"): spec.forceShare = true
      case .option("pattern"):
        parameters.pattern = UInt8(
          try integer(argument, max: 0xff, "Invalid pattern byte specified"))
      case .option("flush-interval"):
        parameters.flushInterval = try integer(
          argument, max: UInt64(Int32.max), "Invalid flush interval specified")
      case .option("no-drain"): parameters.drainOnFlush = false
      case .option("image-opts"): imageOpts = true
      default:
        throw reporter.usageError("unrecognized option '\(parser.arguments[parser.optind - 1])'")
      }
    }
    guard parser.operands.count == 1, let filename = parser.operands.first else {
      throw reporter.usageError("Expecting one image file name")
    }
    if !parameters.write && parameters.flushInterval != 0 {
      reporter.error("--flush-interval is only available in write tests")
      throw CommandExit()
    }
    if parameters.flushInterval != 0 && parameters.flushInterval < parameters.depth {
      reporter.error("Flush interval can't be smaller than depth")
      throw CommandExit()
    }

    let backend = try await openImage(
      filename, imageOpts: imageOpts, spec: spec, reporter: reporter, console: console)
    let status = await benchmark(backend, parameters, reporter: reporter, console: console)
    await backend.close()
    return status
  }

  /// Prints the parameters, runs the requests and prints the time they took.
  private static func benchmark(
    _ backend: BlockBackend, _ parameters: BenchParameters, reporter: Reporter, console: Console
  ) async -> Int32 {
    console.write(
      "Sending \(parameters.count) \(parameters.write ? "write" : "read") requests, "
        + "\(parameters.bufferSize) bytes each, \(parameters.depth) in parallel "
        + "(starting at offset \(Int64(bitPattern: parameters.offset)), "
        + "step size \(parameters.effectiveStep))\n")
    if parameters.flushInterval != 0 {
      console.write("Sending flush every \(parameters.flushInterval) requests\n")
    }

    let runner = BenchRunner(backend: backend, parameters: parameters)
    let start = ContinuousClock.now
    do {
      try await runner.run()
    } catch let failure as BenchRunner.FlushFailure {
      reporter.error("Failed flush request: \(errorText(failure.error))")
      return 1
    } catch {
      reporter.error("Failed request: \(errorText(error))")
      return 1
    }
    let elapsed = (runner.completedAt ?? .now) - start
    let seconds =
      Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    console.write(cFormat("Run completed in %3.3f seconds.\n", seconds))
    return 0
  }

  /// qemu-img's `img_open`.
  private static func openImage(
    _ filename: String, imageOpts: Bool, spec: ImageSpec, reporter: Reporter, console: Console
  ) async throws -> BlockBackend {
    var spec = spec
    if imageOpts {
      if spec.format != nil {
        reporter.error("--image-opts and --format are mutually exclusive")
        throw CommandExit()
      }
      spec.options = parseOptionString(filename, impliedKey: "file", reporter: reporter)
      if spec.forceShare, let share = spec.options["force-share"], share != "on" {
        reporter.error("--force-share/-U conflicts with image options")
        throw CommandExit()
      }
    } else {
      spec.filename = filename
    }
    do {
      let backend = try await openBackend(spec)
      if warnsAboutProbedRaw(spec, backend) {
        console.writeError(probedRawWarning(filename, backend: backend))
      }
      return backend
    } catch {
      reporter.error("Could not open '\(filename)': \(errorMessage(error))")
      throw CommandExit()
    }
  }
}
