import BlockCore

/// `qemu-img`'s front end: global options (`-h`, `-V`, `-T`), then a command.
/// Every qemu-img 7.2 command exists (``commands``); unknown ones are "not
/// found" as in qemu-img. `--help` prints qemu-img's usage (``help``).
@BlockActor
enum ImageTool {
  /// qemu-img 7.2's command names, in its usage's order; `spindle NAME`
  /// runs them too.
  nonisolated static let commands = [
    "amend", "bench", "bitmap", "check", "commit", "compare", "convert", "create", "dd", "info",
    "map", "measure", "snapshot", "rebase", "resize",
  ]

  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("version", key: "V"), .init("trace", .required, key: "T"),
  ]

  /// Runs `qemu-img` with `arguments` (`arguments[0]` is the program).
  static func run(arguments: [String], programName: String, console: Console) async -> Int32 {
    let reporter = Reporter(console: console, programName: programName)
    func usageError(_ message: String) -> Int32 {
      reporter.usageError(message).status
    }
    var parser = Getopt(arguments: arguments, options: "+:hVT:", longOptions: longOptions) { _ in
    }
    while let result = parser.next() {
      switch result {
      case .missingArgument:
        return usageError(
          "missing argument for option '\(parser.arguments[parser.optind - 1])'")
      case .invalid:
        return usageError("unrecognized option '\(parser.arguments[parser.optind - 1])'")
      case .option("h"):
        console.write(help)
        return 0
      case .option("V"):
        console.write("\(programName) version \(Spindle.version) (Spindle, qemu-img 7.2)\n")
        return 0
      default:
        guard applyTraceOption(parser.optarg ?? "", reporter: reporter) else { return 1 }
      }
    }
    let operands = Array(parser.operands)
    guard let command = operands.first else { return usageError("Not enough arguments") }
    switch command {
    case "create":
      return await CreateTool.run(arguments: operands, programName: programName, console: console)
    case "info":
      return await InfoTool.run(arguments: operands, programName: programName, console: console)
    case "map":
      return await MapTool.run(arguments: operands, programName: programName, console: console)
    case "convert":
      return await ConvertTool.run(arguments: operands, programName: programName, console: console)
    case "compare":
      return await CompareTool.run(arguments: operands, programName: programName, console: console)
    case "resize":
      return await ResizeTool.run(arguments: operands, programName: programName, console: console)
    case "commit":
      return await CommitTool.run(arguments: operands, programName: programName, console: console)
    case "rebase":
      return await RebaseTool.run(arguments: operands, programName: programName, console: console)
    case "dd":
      return await DdTool.run(arguments: operands, programName: programName, console: console)
    case "measure":
      return await MeasureTool.run(arguments: operands, programName: programName, console: console)
    case "bench":
      return await BenchTool.run(arguments: operands, programName: programName, console: console)
    case "check":
      return await CheckTool.run(arguments: operands, programName: programName, console: console)
    case "amend":
      return await AmendTool.run(arguments: operands, programName: programName, console: console)
    case "snapshot":
      return await SnapshotTool.run(arguments: operands, programName: programName, console: console)
    case "bitmap":
      return await BitmapTool.run(arguments: operands, programName: programName, console: console)
    default:
      return usageError("Command not found: \(command)")
    }
  }
}
