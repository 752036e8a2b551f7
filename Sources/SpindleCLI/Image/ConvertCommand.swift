import BlockCore
import BlockDrivers

/// `qemu-img convert`, a qemu-img 7.2 work-alike:
///
///     convert [-U] [-c] [-p] [-q] [-n] [-f FMT] [-t CACHE] [-T SRC_CACHE] [-O OUTPUT_FMT]
///             [-o OPTIONS] [-S SPARSE_SIZE] [-m NUM_COROUTINES] [-W] [--target-is-zero]
///             FILENAME [FILENAME2 [...]] OUTPUT_FILENAME
///
/// Options are checked in QEMU's order with its messages; the target is
/// created (unless `-n`) with `create`'s code and then filled by
/// ``ImageCopier`` with `-m` runs in flight (writes in order unless `-W`).
/// Several sources are concatenated; `--image-opts` applies to them. `-B`, `-l`, `-C`, `-r`, `--salvage`, `--bitmaps`,
/// `--object` and image options are refused as not supported yet.
@BlockActor
enum ConvertTool {
  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("object", .required), .init("image-opts"),
    .init("target-image-opts"), .init("salvage"), .init("target-is-zero"), .init("bitmaps"),
    .init("skip-broken-bitmaps"), .init("force-share", key: "U"),
  ]

  static func run(arguments: [String], programName: String, console: Console) async -> Int32 {
    let reporter = Reporter(console: console, programName: programName)
    do {
      return try await parseAndRun(arguments, reporter: reporter, console: console)
    } catch {
      return 1
    }
  }

  private static func parseAndRun(_ arguments: [String], reporter: Reporter, console: Console)
    async throws -> Int32
  {
    var parser = Getopt(
      arguments: arguments, options: ":hf:O:B:CcF:o:l:S:pt:T:qnm:WbUr:", longOptions: longOptions
    ) { _ in }
    func fail(_ message: String) -> CommandExit {
      reporter.error(message)
      return CommandExit()
    }
    var sourceFormat: String?
    var outputFormat = "raw"
    var options: String?
    var settings = ImageCopier.Settings()
    var skipCreate = false
    var targetIsZero = false
    var progress = false
    var quiet = false
    var forceShare = false
    var cache = "unsafe"
    var sourceCache = "writeback"
    var imageOpts = false
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
      case .option("f"): sourceFormat = argument
      case .option("O"): outputFormat = argument
      case .option("c"): settings.compressed = true
      case .option("o"):
        guard CreateTool.isValidOptionList(argument) else {
          throw fail("Invalid option list: \(argument)")
        }
        options = options.map { "\($0),\(argument)" } ?? argument
      case .option("S"):
        guard
          let value = parseImageNumber(
            argument, name: "buffer size for sparse output", reporter: reporter)
        else { throw CommandExit() }
        guard value % 512 == 0, value <= 16 << 20 else {
          throw fail(
            "Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 16777216. Select 0 to disable sparse detection (fully allocates output)."
          )
        }
        settings.minSparse = Int(value)
      case .option("p"): progress = true
      case .option("t"): cache = argument
      case .option("T"): sourceCache = argument
      case .option("q"): quiet = true
      case .option("n"): skipCreate = true
      case .option("m"):
        let (value, complete) = parseCLong(argument)
        guard complete, (1...16).contains(value) else {
          throw fail(
            "Invalid number of coroutines. Allowed number of coroutines is between 1 and 16")
        }
        settings.inFlight = value
      case .option("W"): settings.outOfOrder = true
      case .option("U"): forceShare = true
      case .option("target-is-zero"): targetIsZero = true
      case .option("image-opts"): imageOpts = true
      default:
        let name = parser.arguments[parser.optind - 1]
        throw fail("\(name) is not supported by Spindle's convert yet")
      }
    }
    if targetIsZero && !skipCreate {
      throw fail("--target-is-zero requires use of -n flag")
    }
    let operands = Array(parser.operands)
    let sourceCount = operands.count - 1
    let outputFilename = sourceCount >= 1 ? operands.last : nil
    if let options, CreateOptionValues.asksForHelp(options) {
      return CreateTool.printOptionHelp(
        format: outputFormat, filename: outputFilename, reporter: reporter)
    }
    guard sourceCount >= 1, let outputFilename else {
      throw fail("Must specify image file name")
    }
    guard let sourceCacheMode = parseCacheMode(sourceCache) else {
      throw fail("Invalid source cache option: \(sourceCache)")
    }
    if quiet { progress = false }
    let meter = ProgressMeter(enabled: progress, console: console)
    meter.report(0)

    // QEMU ends the progress line (a newline) however the command ends.
    do {
      try await openAndConvert(
        operands: operands, outputFilename: outputFilename, sourceFormat: sourceFormat,
        sourceCache: sourceCacheMode, forceShare: forceShare, imageOpts: imageOpts,
        outputFormat: outputFormat, options: options, cache: cache, skipCreate: skipCreate,
        targetIsZero: targetIsZero, settings: settings, meter: meter, reporter: reporter)
    } catch {
      meter.end()
      throw error
    }
    meter.report(100)
    meter.end()
    return 0
  }

  /// Opens the sources, then converts.
  private static func openAndConvert(
    operands: [String], outputFilename: String, sourceFormat: String?, sourceCache: CacheMode,
    forceShare: Bool, imageOpts: Bool, outputFormat: String, options: String?, cache: String,
    skipCreate: Bool, targetIsZero: Bool, settings: ImageCopier.Settings, meter: ProgressMeter,
    reporter: Reporter
  ) async throws {
    let sourceCacheMode = sourceCache
    var sources: [BlockBackend] = []
    func closeSources() async {
      for source in sources { await source.close() }
    }
    for filename in operands.dropLast() {
      var spec = ImageSpec()
      spec.format = sourceFormat
      spec.node.readOnly = true
      spec.node.cache = sourceCacheMode
      spec.forceShare = forceShare
      guard
        let source = await openImage(
          filename, imageOpts: imageOpts, spec: spec, reporter: reporter)
      else {
        await closeSources()
        throw CommandExit()
      }
      sources.append(source)
    }
    do {
      try await convert(
        sources: sources, to: outputFilename, format: outputFormat, options: options,
        cache: cache, skipCreate: skipCreate, targetIsZero: targetIsZero, settings: settings,
        meter: meter, reporter: reporter)
    } catch {
      await closeSources()
      throw error
    }
    await closeSources()
  }

  /// Creates (unless `skipCreate`) and opens the target, then copies.
  private static func convert(
    sources: [BlockBackend], to filename: String, format: String, options: String?,
    cache: String,
    skipCreate: Bool, targetIsZero: Bool, settings: ImageCopier.Settings, meter: ProgressMeter,
    reporter: Reporter
  ) async throws {
    func fail(_ message: String) -> CommandExit {
      reporter.error(message)
      return CommandExit()
    }
    let length = sources.reduce(Int64(0)) { $0 + $1.length }
    let size = UInt64(length)
    if !skipCreate {
      guard let list = CreateOptionList.forFormat(format, withProtocol: true) else {
        throw fail("Unknown file format '\(format)'")
      }
      var values = CreateOptionValues(list: list)
      do {
        if let options { try values.parse(options) }
        try values.set("size", String(size))
        if values.string("backing_file") != nil && values.string("backing_fmt") == nil {
          throw CreateOptionValues.Failure(
            message: "Use of backing file requires explicit backing format")
        }
        if values.string("backing_file") != nil || values.string("backing_fmt") != nil {
          throw CreateOptionValues.Failure(
            message: "backing files in convert are not supported by Spindle yet")
        }
        try checkSupported(values)
      } catch {
        throw fail((error as? CreateOptionValues.Failure)?.message ?? errorMessage(error))
      }
      if settings.compressed && format != "qcow2" {
        throw fail("Compression not supported for this file format")
      }
      do {
        try await createFormatted(filename, format: format, size: size, values: values)
      } catch {
        let message = (error as? CreateOptionValues.Failure)?.message ?? errorMessage(error)
        throw fail("\(filename): error while converting \(format): \(message)")
      }
    }
    guard let cacheMode = parseCacheMode(cache) else {
      throw fail("Invalid cache option: \(cache)")
    }
    var targetSpec = ImageSpec()
    targetSpec.filename = filename
    targetSpec.format = format
    targetSpec.node.cache = cacheMode
    let target: BlockBackend
    do {
      target = try await openBackend(targetSpec)
    } catch {
      throw fail("Could not open '\(filename)': \(errorMessage(error))")
    }
    if skipCreate && target.length < length {
      await target.close()
      throw fail("output file is smaller than input file")
    }
    if settings.compressed && !target.root.capabilities.canWriteCompressed {
      await target.close()
      throw fail("Compression not supported for this file format")
    }
    var settings = settings
    // QEMU's has_zero_init: a new image without backing reads as zeroes,
    // an existing one only when the user says so; -S 0 writes everything.
    settings.targetIsZero = settings.minSparse > 0 && (!skipCreate || targetIsZero)
    settings.clusterSize = Int(target.root.clusterSize)
    let copier = ImageCopier(sources: sources, target: target, settings: settings, meter: meter)
    do {
      try await copier.run()
      try await target.flush()
    } catch let error as ImageCopier.Failure {
      await target.close()
      throw fail(error.message)
    } catch {
      await target.close()
      throw fail("error while flushing: \(errorMessage(error))")
    }
    await target.close()
  }
}
