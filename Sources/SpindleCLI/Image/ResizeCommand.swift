import BlockCore
import BlockDrivers

/// `qemu-img resize`, a qemu-img 7.2 work-alike:
///
///     resize [-f FMT] [--preallocation=PREALLOC] [-q] [--shrink] FILENAME [+ | -]SIZE
///
/// The size is taken off the end of the command line before options are
/// parsed (so `-1M` is not an option), as QEMU's `img_resize` does; growing
/// and (with `--shrink`) shrinking go through the engine's truncate, so what
/// each format can do is its driver's business (raw and qcow2 grow and
/// shrink; qcow2 shrinks as QEMU's `qcow2_co_truncate` does).
@BlockActor
enum ResizeTool: ImageSubcommand {
  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("object", .required), .init("image-opts"),
    .init("preallocation", .required), .init("shrink"),
  ]

  static func parseAndRun(_ arguments: [String], reporter: Reporter, console: Console)
    async throws -> Int32
  {
    func fail(_ message: String) -> CommandExit {
      reporter.error(message)
      return CommandExit()
    }
    guard arguments.count >= 3, var sizeText = arguments.last else {
      throw reporter.usageError("Not enough arguments")
    }
    var parser = Getopt(
      arguments: Array(arguments.dropLast()), options: ":f:hq", longOptions: longOptions
    ) { _ in }
    var format: String?
    var quiet = false
    var shrink = false
    var preallocation = PreallocationMode.off
    var imageOpts = false
    var objects = ObjectRegistry()
    while let result = parser.next() {
      let argument = parser.optarg ?? ""
      switch result {
      case .missingArgument, .invalid, .option("h"):
        throw reporter.sharedOptionExit(result, parser, console: console)
      case .option("f"): format = argument
      case .option("q"): quiet = true
      case .option("shrink"): shrink = true
      case .option("preallocation"):
        guard let mode = PreallocationMode(rawValue: argument) else {
          throw fail("Invalid preallocation mode '\(argument)'")
        }
        preallocation = mode
      case .option("image-opts"): imageOpts = true
      case .option("object"):
        try objects.add(argument, reporter: reporter, console: console)
      default:
        throw reporter.usageError("unrecognized option '\(parser.arguments[parser.optind - 1])'")
      }
    }
    guard parser.operands.count == 1, let filename = parser.operands.first else {
      throw reporter.usageError("Expecting image file name and size")
    }
    var relative: Int64 = 0
    if sizeText.hasPrefix("+") {
      relative = 1
      sizeText.removeFirst()
    } else if sizeText.hasPrefix("-") {
      relative = -1
      sizeText.removeFirst()
    }
    var sizeOption = CreateOptionValues(
      list: CreateOptionList(options: CreateOptionList.rawOptions))
    do {
      try sizeOption.set("size", sizeText)
    } catch {
      throw fail(error.message)
    }
    let size = sizeOption.number("size") ?? 0

    var spec = ImageSpec()
    spec.format = format
    guard
      let backend = await openImage(
        filename, imageOpts: imageOpts, spec: spec, reporter: reporter)
    else { throw CommandExit() }
    let current = backend.length
    let (total, overflow): (Int64, Bool) =
      relative == 0
      ? (Int64(bitPattern: size), size > UInt64(Int64.max))
      : current.addingReportingOverflow(relative * Int64(bitPattern: size))
    do {
      if total <= 0 || overflow {
        throw fail("New image size must be positive")
      }
      if total <= current && preallocation != .off {
        throw fail("Preallocation can only be used for growing images")
      }
      if total < current && !shrink {
        reporter.error("Use the --shrink option to perform a shrink operation.")
        reporter.warning(
          "Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there."
        )
        throw CommandExit()
      }
      do {
        try await backend.truncate(to: total, exact: false, preallocation: preallocation)
      } catch {
        throw fail(errorMessage(error))
      }
    } catch {
      await backend.close()
      throw error
    }
    await backend.close()
    if !quiet { console.write("Image resized.\n") }
    return 0
  }
}
