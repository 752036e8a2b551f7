import BlockCore
import BlockDrivers

/// `qemu-img map`, a qemu-img 7.2 work-alike:
///
///     map [-f FMT] [--start-offset=OFFSET] [--max-length=LEN] [--output=human|json] [-U]
///         FILENAME
///
/// Walks the image through the backing chain with the engine's block status,
/// merging runs as QEMU's `img_map` does, and prints them as a table of the
/// data runs (human) or as every run with its depth (JSON).
@BlockActor
enum MapTool: ImageSubcommand {
  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("format", .required, key: "f"), .init("output", .required),
    .init("object", .required), .init("image-opts"), .init("start-offset", .required),
    .init("max-length", .required), .init("force-share", key: "U"),
  ]

  static func parseAndRun(_ arguments: [String], reporter: Reporter, console: Console)
    async throws -> Int32
  {
    var parser = Getopt(arguments: arguments, options: ":f:hU", longOptions: longOptions) { _ in }
    var spec = ImageSpec()
    spec.node.readOnly = true
    var output = "human"
    var startOffset: Int64 = 0
    var maxLength: Int64?
    var imageOpts = false
    var objects = ObjectRegistry()
    while let result = parser.next() {
      let argument = parser.optarg ?? ""
      switch result {
      case .missingArgument, .invalid, .option("h"):
        throw reporter.sharedOptionExit(result, parser, console: console)
      case .option("f"): spec.format = argument
      case .option("U"): spec.forceShare = true
      case .option("output"): output = argument
      case .option("start-offset"):
        guard let value = parseImageNumber(argument, name: "start offset", reporter: reporter)
        else { throw CommandExit() }
        startOffset = value
      case .option("max-length"):
        guard let value = parseImageNumber(argument, name: "max length", reporter: reporter)
        else { throw CommandExit() }
        maxLength = value
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
    guard output == "human" || output == "json" else {
      reporter.error("--output must be used with human or json as argument.")
      throw CommandExit()
    }
    guard
      let backend = await openImage(
        filename, imageOpts: imageOpts, spec: spec, reporter: reporter)
    else { throw CommandExit() }
    let status = await printMap(
      backend.root, start: startOffset, maxLength: maxLength, json: output == "json",
      reporter: reporter)
    await backend.close()
    return status
  }

  /// QEMU's `img_map` loop after opening.
  private static func printMap(
    _ root: BlockNode, start: Int64, maxLength: Int64?, json: Bool, reporter: Reporter
  ) async -> Int32 {
    let console = reporter.console
    var length = root.length
    if let maxLength { length = min(start &+ maxLength, length) }
    if json {
      console.write("[")
    } else {
      console.write("Offset          Length          Mapped to       File\n")
    }
    var current = MapEntry(start: start, length: 0)
    var status: Int32 = 0
    loop: do {
      while current.start + current.length < length {
        let offset = current.start + current.length
        let bytes = min(1 << 30, length - offset)
        var next: MapEntry
        do {
          next = try await mapEntry(root, offset: offset, bytes: bytes)
        } catch {
          reporter.error("Could not read file metadata: \(errorMessage(error))")
          status = 1
          break loop
        }
        if current.mergeable(with: next) {
          current.length += next.length
          continue
        }
        if current.length > 0 {
          guard dump(current, next: &next, json: json, reporter: reporter) else {
            status = 1
            break loop
          }
        }
        current = next
      }
      var none: MapEntry?
      if !dump(current, next: &none, json: json, reporter: reporter) { status = 1 }
    }
    if json { console.write("]\n") }
    return status
  }

  /// QEMU's `dump_map_entry`; human output folds runs that are not data into
  /// zeroes so that they merge.
  private static func dump(
    _ entry: MapEntry, next: inout MapEntry?, json: Bool, reporter: Reporter
  ) -> Bool {
    if json {
      reporter.console.write(entry.json + (next != nil ? ",\n" : ""))
      return true
    }
    if entry.data && entry.offset == nil {
      reporter.error("File contains external, encrypted or compressed clusters.")
      return false
    }
    if entry.data && !entry.zero { reporter.console.write(entry.humanLine) }
    if var following = next, !following.data || following.zero {
      following.data = false
      following.zero = true
      next = following
    }
    return true
  }

  private static func dump(
    _ entry: MapEntry, next: inout MapEntry, json: Bool, reporter: Reporter
  ) -> Bool {
    var optional: MapEntry? = next
    defer { next = optional! }
    return dump(entry, next: &optional, json: json, reporter: reporter)
  }
}
