import BlockCore
import BlockDrivers

/// `qemu-img check`, a qemu-img 7.2 work-alike:
///
///     check [--object OBJECTDEF] [--image-opts] [-q] [-f FMT] [--output=OFMT]
///           [-r [leaks | all]] [-T SRC_CACHE] [-U] FILENAME
///
/// Opens the image as QEMU's `BDRV_O_CHECK` (writable with `-r`), runs the
/// format's consistency check (qcow2 only; other formats "do not support
/// checks", status 63) and, after a repair, checks again. Exit status: 0
/// clean, 1 check failed, 2 corruptions, 3 leaks only.
@BlockActor
enum CheckTool: ImageSubcommand {
  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("format", .required, key: "f"),
    .init("repair", .required, key: "r"), .init("output", .required),
    .init("object", .required), .init("image-opts"), .init("force-share", key: "U"),
  ]

  /// Parses the options as qemu-img does, then runs the command.
  static func parseAndRun(_ arguments: [String], reporter: Reporter, console: Console)
    async throws -> Int32
  {
    var parser = Getopt(arguments: arguments, options: ":hf:r:T:qU", longOptions: longOptions) {
      _ in
    }
    var format: String?
    var output: String?
    var cache = "writeback"
    var mode: Qcow2CheckMode = []
    var quiet = false
    var forceShare = false
    var imageOpts = false
    var objects = ObjectRegistry()
    while let result = parser.next() {
      let argument = parser.optarg ?? ""
      switch result {
      case .missingArgument, .invalid, .option("h"):
        throw reporter.sharedOptionExit(result, parser, console: console)
      case .option("f"): format = argument
      case .option("r"):
        switch argument {
        case "leaks": mode = .fixLeaks
        case "all": mode = [.fixLeaks, .fixErrors]
        default:
          throw reporter.usageError(
            "Unknown option value for -r (expecting 'leaks' or 'all'): \(argument)")
        }
      case .option("output"): output = argument
      case .option("T"): cache = argument
      case .option("q"): quiet = true
      case .option("U"): forceShare = true
      case .option("image-opts"): imageOpts = true
      case .option("object"):
        try objects.add(argument, reporter: reporter, console: console)
      default:
        throw reporter.usageError("unrecognized option '\(parser.arguments[parser.optind - 1])'")
      }
    }
    guard parser.operands.count == 1, let filename = parser.operands.first else {
      throw reporter.usageError("Expecting one image file name")
    }
    let json: Bool
    switch output {
    case nil, "human": json = false
    case "json": json = true
    default:
      reporter.error("--output must be used with human or json as argument.")
      throw CommandExit()
    }
    guard let cacheMode = parseCacheMode(cache) else {
      reporter.error("Invalid source cache option: \(cache)")
      throw CommandExit()
    }
    var spec = ImageSpec()
    spec.format = format
    spec.node.readOnly = mode.isEmpty
    spec.node.cache = cacheMode
    spec.forceShare = forceShare
    spec.forCheck = true
    guard
      let backend = await openImage(filename, imageOpts: imageOpts, spec: spec, reporter: reporter)
    else { throw CommandExit() }
    let status = await check(
      backend.root, filename: filename, mode: mode, json: json, quiet: quiet, reporter: reporter)
    await backend.close()
    return status
  }

  /// QEMU's `img_check` after the open: check (and repair), check again
  /// after a repair, print the report and choose the exit status.
  private static func check(
    _ node: BlockNode, filename: String, mode: Qcow2CheckMode, json: Bool, quiet: Bool,
    reporter: Reporter
  ) async -> Int32 {
    let console = reporter.console
    guard let driver = node.driver as? Qcow2Driver else {
      reporter.error("This image format does not support checks")
      return 63
    }
    var result = await runCheck(driver, node, mode: mode, reporter: reporter)
    // A failed check fills in nothing (QEMU's collect_image_check returns
    // early): no summary, no second check.
    if result.failure == nil && (result.corruptionsFixed != 0 || result.leaksFixed != 0) {
      if !json && !quiet {
        console.write(
          """
          The following inconsistencies were found and repaired:

              \(result.leaksFixed) leaked clusters
              \(result.corruptionsFixed) corruptions

          Double checking the fixed image now...

          """)
      }
      let fixed = result
      result = await runCheck(driver, node, mode: [], reporter: reporter)
      result.leaksFixed = fixed.leaksFixed
      result.corruptionsFixed = fixed.corruptionsFixed
    }
    let report = CheckReport(result: result, filename: filename, format: driver.formatName)
    if result.failure == nil && !quiet {
      console.write(json ? report.json + "\n" : report.human)
    }
    if let failure = result.failure {
      reporter.error("Check failed: \(failure.codeDescription)")
      return 1
    }
    if result.checkErrors != 0 {
      reporter.error("Check failed")
      return 1
    }
    return result.corruptions != 0 ? 2 : result.leaks != 0 ? 3 : 0
  }

  /// One check, its diagnostics printed on standard error.
  private static func runCheck(
    _ driver: Qcow2Driver, _ node: BlockNode, mode: Qcow2CheckMode, reporter: Reporter
  ) async -> Qcow2CheckResult {
    let console = reporter.console
    var result: Qcow2CheckResult
    do {
      result = try await driver.check(node, mode: mode)
    } catch let error as BlockError {
      result = Qcow2CheckResult()
      result.failure = error
    } catch {
      result = Qcow2CheckResult()
      result.failure = BlockError(.ioError)
    }
    for (index, line) in result.messages.enumerated() {
      if result.errorReports.contains(index) {
        console.writeError("\(reporter.programName): \(line)\n")
      } else {
        console.writeError(line + "\n")
      }
    }
    return result
  }
}
