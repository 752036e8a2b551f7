import BlockCore
import BlockDrivers

/// `qemu-img compare`, a qemu-img 7.2 work-alike:
///
///     compare [-f FMT] [-F FMT] [-T SRC_CACHE] [-p] [-q] [-s] [-U] FILENAME1 FILENAME2
///
/// Walks both images with the engine's block status through their chains:
/// ranges that are zeroes in both are skipped, ranges allocated in both are
/// read and compared, a range allocated in one only must read as zeroes there;
/// the part of the larger image past the smaller one's end must read as
/// zeroes. Exit status 0 (identical), 1 (different), 2 (could not open),
/// 3 (block status failed), 4 (read failed), as QEMU's `img_compare`.
@BlockActor
enum CompareTool: ImageSubcommand {
  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("object", .required), .init("image-opts"),
    .init("force-share", key: "U"),
  ]

  /// QEMU's IO_BUF_SIZE.
  static let chunkSize: Int64 = 2 << 20

  static func parseAndRun(_ arguments: [String], reporter: Reporter, console: Console)
    async throws -> Int32
  {
    var parser = Getopt(arguments: arguments, options: ":hf:F:T:pqsU", longOptions: longOptions) {
      _ in
    }
    var formats: [String?] = [nil, nil]
    var cache = "writeback"
    var progress = false
    var quiet = false
    var strict = false
    var forceShare = false
    var imageOpts = false
    var objects = ObjectRegistry()
    while let result = parser.next() {
      let argument = parser.optarg ?? ""
      switch result {
      case .missingArgument, .invalid, .option("h"):
        throw reporter.sharedOptionExit(result, parser, console: console)
      case .option("f"): formats[0] = argument
      case .option("F"): formats[1] = argument
      case .option("T"): cache = argument
      case .option("p"): progress = true
      case .option("q"): quiet = true
      case .option("s"): strict = true
      case .option("U"): forceShare = true
      case .option("image-opts"): imageOpts = true
      case .option("object"):
        try objects.add(argument, reporter: reporter, console: console, failureStatus: 2)
      default:
        throw reporter.usageError("unrecognized option '\(parser.arguments[parser.optind - 1])'")
      }
    }
    if quiet { progress = false }
    let meter = ProgressMeter(enabled: progress, console: console, minSkip: 2)
    defer { meter.end() }
    guard parser.operands.count == 2 else {
      throw reporter.usageError("Expecting two image file names")
    }
    let filenames = Array(parser.operands)
    guard let cacheMode = parseCacheMode(cache) else {
      reporter.error("Invalid source cache option: \(cache)")
      throw CommandExit(status: 2)
    }
    var backends: [BlockBackend] = []
    for index in 0..<2 {
      var spec = ImageSpec()
      spec.format = formats[index]
      spec.node.readOnly = true
      spec.node.cache = cacheMode
      spec.forceShare = forceShare
      guard
        let backend = await openImage(
          filenames[index], imageOpts: imageOpts, spec: spec, reporter: reporter)
      else {
        for backend in backends { await backend.close() }
        throw CommandExit(status: 2)
      }
      backends.append(backend)
    }
    let comparison = ImageComparison(
      images: (backends[0], backends[1]), filenames: (filenames[0], filenames[1]), strict: strict,
      quiet: quiet, meter: meter)
    let status: Int32
    switch await comparison.run() {
    case .identical:
      if !quiet { console.write("Images are identical.\n") }
      status = 0
    case .different(let message):
      if !quiet { console.write(message + "\n") }
      status = 1
    case .failed(let message, let code):
      reporter.error(message)
      status = code
    }
    for backend in backends { await backend.close() }
    return status
  }
}
