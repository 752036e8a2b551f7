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
/// Several sources are concatenated; `--image-opts` applies to them,
/// `--target-image-opts` (with `-n`) to the target. With a target backing
/// file (`-B`/`-F` or `-o backing_file`) only what the source's top image
/// allocates is copied, and zeroes past the end of a new target's backing
/// file are not written; `-S 0` writes zeroes as data. `-r` limits the bytes
/// read per second as QEMU does (``RateLimiter``); `--salvage` turns failed
/// reads and block-status queries into warnings and zeroes, sector by
/// sector. `-C` is checked and otherwise ignored.
/// `--object` defines secrets (see ``ObjectRegistry``); `-l` reads the
/// sources at an internal snapshot (``InternalSnapshotOption``);
/// `--bitmaps` copies the source's persistent bitmaps (``ConvertBitmaps``).
@BlockActor
enum ConvertTool: ImageSubcommand {
  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("object", .required), .init("image-opts"),
    .init("target-image-opts"), .init("salvage"), .init("target-is-zero"), .init("bitmaps"),
    .init("skip-broken-bitmaps"), .init("force-share", key: "U"),
  ]

  /// What the command line says about the target besides its format.
  struct TargetOptions {
    /// `-B`: the target's backing file.
    var backing: String?
    /// `-F`: the backing file's format.
    var backingFormat: String?
    /// `--target-image-opts`: the output name is an option string.
    var imageOpts = false
    /// Whether `-O` was given (it conflicts with `--target-image-opts`).
    var formatGiven = false
    /// `--bitmaps`: copy the source's persistent bitmaps.
    var bitmaps = false
    /// `--skip-broken-bitmaps`: skip inconsistent ones.
    var skipBrokenBitmaps = false
  }

  static func parseAndRun(_ arguments: [String], reporter: Reporter, console: Console)
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
    var target = TargetOptions()
    var copyOffloading = false
    var salvage = false
    var explicitSparse = false
    var objects = ObjectRegistry()
    var snapshot: InternalSnapshotOption?
    while let result = parser.next() {
      let argument = parser.optarg ?? ""
      switch result {
      case .missingArgument, .invalid, .option("h"):
        throw reporter.sharedOptionExit(result, parser, console: console)
      case .option("f"): sourceFormat = argument
      case .option("l"):
        guard let parsed = InternalSnapshotOption.parse(argument, reporter: reporter) else {
          throw CommandExit()
        }
        snapshot = parsed
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
        explicitSparse = true
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
      case .option("B"): target.backing = argument
      case .option("F"): target.backingFormat = argument
      case .option("C"): copyOffloading = true
      case .option("r"):
        guard let rate = parseImageNumber(argument, name: "rate limit", reporter: reporter)
        else {
          throw CommandExit()
        }
        settings.rateLimit = UInt64(rate)
      case .option("salvage"):
        salvage = true
        settings.salvage = true
      case .option("target-image-opts"): target.imageOpts = true
      case .option("bitmaps"): target.bitmaps = true
      case .option("skip-broken-bitmaps"): target.skipBrokenBitmaps = true
      case .option("object"):
        try objects.add(argument, reporter: reporter, console: console)
      case .option("O"):
        outputFormat = argument
        target.formatGiven = true
      default:
        let name = parser.arguments[parser.optind - 1]
        throw fail("\(name) is not supported by Spindle's convert yet")
      }
    }
    if target.skipBrokenBitmaps && !target.bitmaps {
      throw fail("Use of --skip-broken-bitmaps requires --bitmaps")
    }
    if settings.compressed && copyOffloading {
      throw fail("Cannot enable copy offloading when -c is used")
    }
    if explicitSparse && copyOffloading {
      throw fail("Cannot enable copy offloading when -S is used")
    }
    if copyOffloading && salvage {
      throw fail("Cannot use copy offloading in salvaging mode")
    }
    if target.imageOpts && !skipCreate {
      throw fail("--target-image-opts requires use of -n flag")
    }
    if skipCreate && options != nil {
      throw fail("-o has no effect when skipping image creation")
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
        snapshot: snapshot, outputFormat: outputFormat, options: options, cache: cache,
        skipCreate: skipCreate,
        targetIsZero: targetIsZero, target: target, settings: settings, meter: meter,
        reporter: reporter, quiet: quiet)
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
    forceShare: Bool, imageOpts: Bool, snapshot: InternalSnapshotOption?, outputFormat: String,
    options: String?, cache: String,
    skipCreate: Bool, targetIsZero: Bool, target: TargetOptions, settings: ImageCopier.Settings,
    meter: ProgressMeter, reporter: Reporter, quiet: Bool
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
      spec.sharesWrites = false  // BDRV_O_NO_SHARE: no one may change a source
      guard
        let source = await openImage(
          filename, imageOpts: imageOpts, spec: spec, reporter: reporter)
      else {
        await closeSources()
        throw CommandExit()
      }
      sources.append(source)
    }
    if let snapshot {
      do {
        if snapshot.isPlainName && sources.count > 1 {
          throw BlockError(.invalidArgument, "No support for concatenating multiple snapshot")
        }
        do {
          try await snapshot.load(into: sources[0].root)
        } catch {
          throw BlockError(.invalidArgument, "Failed to load snapshot: \(errorMessage(error))")
        }
      } catch {
        reporter.error(errorMessage(error))
        await closeSources()
        throw CommandExit()
      }
    }
    do {
      try await convert(
        sources: sources, to: outputFilename, format: outputFormat, options: options,
        cache: cache, skipCreate: skipCreate, targetIsZero: targetIsZero, targetOptions: target,
        settings: settings, meter: meter, reporter: reporter, quiet: quiet)
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
    skipCreate: Bool, targetIsZero: Bool, targetOptions: TargetOptions,
    settings: ImageCopier.Settings, meter: ProgressMeter, reporter: Reporter, quiet: Bool
  ) async throws {
    func fail(_ message: String) -> CommandExit {
      reporter.error(message)
      return CommandExit()
    }
    let length = sources.reduce(Int64(0)) { $0 + $1.length }
    let size = UInt64(length)
    var values: CreateOptionValues?
    if !skipCreate {
      guard
        let list = CreateOptionList.forFormat(format, withProtocol: true, filename: filename)
      else {
        throw fail("Unknown file format '\(format)'")
      }
      var parsed = CreateOptionValues(list: list)
      do {
        if let options { try parsed.parse(options) }
        try parsed.set("size", String(size))
        // QEMU's add_old_style_options: -B and -F become creation options.
        let hasBackingOptions = list.options.contains { $0.name == "backing_file" }
        if let backing = targetOptions.backing {
          guard hasBackingOptions else {
            throw fail("Backing file not supported for file format '\(format)'")
          }
          try parsed.set("backing_file", backing)
        }
        if let backingFormat = targetOptions.backingFormat {
          guard hasBackingOptions else {
            throw fail("Backing file format not supported for file format '\(format)'")
          }
          try parsed.set("backing_fmt", backingFormat)
        }
      } catch let failure as CreateOptionValues.Failure {
        throw fail(failure.message)
      }
      values = parsed
    }
    let backingOption = values?.string("backing_file")
    let hasBacking = backingOption != nil || targetOptions.backing != nil
    if targetIsZero && hasBacking {
      // QEMU reports this and ends successfully.
      reporter.error("Cannot use --target-is-zero when the destination image has a backing file")
      throw CommandExit(status: 0)
    }
    if sources.count > 1 && hasBacking {
      throw fail(
        "Having a backing file for the target makes no sense when concatenating multiple input images"
      )
    }
    if backingOption != nil && values?.string("backing_fmt") == nil {
      throw fail("Use of backing file requires explicit backing format")
    }
    if let values {
      do {
        try checkSupported(values)
      } catch {
        throw fail(error.message)
      }
      if settings.compressed && format != "qcow2" {
        throw fail("Compression not supported for this file format")
      }
    }
    var bitmaps: ConvertBitmaps?
    if targetOptions.bitmaps {
      guard sources.count == 1 else {
        throw fail("Copying bitmaps only possible with single source")
      }
      do {
        bitmaps = try await ConvertBitmaps.check(
          sources[0].root, skipBroken: targetOptions.skipBrokenBitmaps)
      } catch {
        throw fail(errorMessage(error))
      }
    }
    if let values {
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
    targetSpec.node.cache = cacheMode
    // QEMU opens the target with BDRV_O_UNMAP unless `-S 0` (a `discard`
    // option of `--target-image-opts` changes nothing): zero runs written
    // to an existing target (`-n`) free its clusters.
    targetSpec.discardOverride = settings.minSparse > 0 ? .unmap : .ignore
    let target: BlockBackend
    if targetOptions.imageOpts {
      targetSpec.format = targetOptions.formatGiven ? format : nil
      guard
        let opened = await openImage(
          filename, imageOpts: true, spec: targetSpec, reporter: reporter)
      else { throw CommandExit() }
      target = opened
    } else {
      targetSpec.filename = filename
      targetSpec.format = format
      do {
        target = try await openBackend(targetSpec)
      } catch {
        throw fail("Could not open '\(filename)': \(errorMessage(error))")
      }
    }
    if bitmaps != nil {
      do {
        try ConvertBitmaps.checkTarget(target.root)
      } catch {
        await target.close()
        throw fail(errorMessage(error))
      }
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
    settings.targetIsZero =
      settings.minSparse > 0 && !hasBacking && (!skipCreate || targetIsZero)
    settings.targetHasBacking = hasBacking
    // QEMU knows where a new target's backing file ends (zeroes past it
    // need no writing); an existing target's is taken as unknown.
    if hasBacking && !skipCreate { settings.targetBackingLength = target.root.backing?.length }
    settings.clusterSize = Int(target.root.clusterSize)
    // QEMU's salvage warnings are silenced by -q.
    let copier = ImageCopier(
      sources: sources, target: target, settings: settings, meter: meter,
      warn: { if !quiet { reporter.warning($0) } })
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
    if let bitmaps {
      do {
        try await bitmaps.copy(to: target.root) { reporter.warning($0) }
      } catch {
        await target.close()
        throw fail(errorMessage(error))
      }
    }
    await target.close()
  }
}
