import BlockCore

/// `qemu-img`'s front end: global options (`-h`, `-V`, `-T`), then a command.
/// `bench`, `compare`, `convert`, `create`, `info`, `map` and `resize` exist
/// so far; qemu-img's other commands fail with
/// "not supported yet", unknown ones are "not found" as in qemu-img.
@BlockActor
enum ImageTool {
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
    case "bitmap", "snapshot":
      reporter.error("Command '\(command)' is not supported by Spindle yet")
      return 1
    default:
      return usageError("Command not found: \(command)")
    }
  }

  /// The help text (`qemu-img --help`), listing the commands Spindle has.
  static let help = """
    qemu-img (Spindle \(Spindle.version)): qemu-img 7.2 compatible disk image commands
    usage: qemu-img [standard options] command [command options]

        '-h', '--help'       display this help and exit
        '-V', '--version'    output version information and exit
        '-T', '--trace'      [[enable=]<pattern>][,events=<file>][,file=<file>]
                             specify tracing options (accepted and ignored)

    Command syntax:
      amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] \
    -o options filename
      bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] \
    [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] \
    [-t cache] [-w] [-U] filename
      check [--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt] \
    [-r [leaks | all]] [-T src_cache] [-U] filename
      commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] \
    [-r rate_limit] [-d] [-p] filename
      compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2
      convert [-U] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] \
    [-o options] [-S sparse_size] [-m num_coroutines] [-W] [--target-is-zero] filename \
    [filename2 [...]] output_filename
      create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] \
    [-o options] filename [size]
      dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] \
    [skip=blocks] if=input of=output
      info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename
      measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--object objectdef] \
    [--image-opts] [-f fmt] [-l snapshot_param] filename]
      rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] \
    [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename
      resize [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size
      map [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename

    Command parameters:
      'filename' is a disk image filename
      'fmt' is the disk image format. It is guessed automatically in most cases
      'cache' is the cache mode used to write the output disk image, the valid
        options are: 'none', 'writeback' (default, except for convert), 'writethrough',
        'directsync' and 'unsafe' (default for convert)

    """
}
