import BlockCore
import BlockDrivers

/// `spindle io`, a qemu-io 7.2 work-alike:
///
///     spindle io [-c CMD]... [-f FMT] [-t CACHE] [-d DISCARD] [-i AIO] [-r] [-s] [-n]
///                [-C] [-m] [-k] [-U] [--image-opts] [--object OBJ] [-T TRACE] [FILE]
///
/// Opens FILE (or the option string with `--image-opts`), then runs each `-c`
/// command, or, without `-c`, reads commands from the input after a
/// `qemu-io> ` prompt. The exit status is 1 when the options, the open or any
/// command failed.
@BlockActor
enum IOTool {
  /// The long options of qemu-io 7.2.
  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("version", key: "V"), .init("cmd", .required, key: "c"),
    .init("format", .required, key: "f"), .init("read-only", key: "r"),
    .init("snapshot", key: "s"), .init("nocache", key: "n"),
    .init("copy-on-read", key: "C"), .init("misalign", key: "m"),
    .init("native-aio", key: "k"), .init("aio", .required, key: "i"),
    .init("discard", .required, key: "d"), .init("cache", .required, key: "t"),
    .init("trace", .required, key: "T"), .init("object", .required),
    .init("image-opts"), .init("force-share", key: "U"),
  ]

  /// Runs the tool. `arguments[0]` is the name as invoked (glibc prints it in
  /// option errors); `programName` prefixes messages and the prompt.
  static func run(
    arguments: [String], programName: String, console: Console, input: any LineInput
  ) async -> Int32 {
    let reporter = Reporter(console: console, programName: programName)
    var parser = Getopt(
      arguments: arguments, options: "hVc:d:f:rsnCmki:t:T:U", longOptions: longOptions
    ) { console.writeError($0) }
    var spec = ImageSpec()
    spec.sharesWrites = true  // qemu-io opens without BDRV_O_NO_SHARE
    spec.node.discard = .unmap
    spec.node.cache = .writethrough
    var commands: [String] = []
    var readOnly = false
    var misalign = false
    var imageOpts = false
    var objects = ObjectRegistry()
    while let result = parser.next() {
      switch result {
      case .option("s"): spec.snapshot = true
      case .option("n"): spec.node.cache = .none
      case .option("C"): spec.node.copyOnRead = true
      case .option("d"):
        guard let mode = parseDiscardMode(parser.optarg!) else {
          reporter.error("Invalid discard option: \(parser.optarg!)")
          return 1
        }
        spec.node.discard = mode
      case .option("f"): spec.format = parser.optarg
      case .option("c"): commands.append(parser.optarg!)
      case .option("r"): readOnly = true
      case .option("m"): misalign = true
      case .option("k"): spec.aio = combinedAIOMode(spec.aio, "native")
      case .option("i"):
        guard isValidAIOMode(parser.optarg!) else {
          reporter.error("Invalid aio option: \(parser.optarg!)")
          return 1
        }
        spec.aio = combinedAIOMode(spec.aio, parser.optarg!)
      case .option("t"):
        guard let mode = parseCacheMode(parser.optarg!) else {
          reporter.error("Invalid cache option: \(parser.optarg!)")
          return 1
        }
        spec.node.cache = mode
      case .option("T"):
        guard applyTraceOption(parser.optarg!, reporter: reporter) else { return 1 }
      case .option("V"):
        console.write("\(programName) version \(Spindle.version) (Spindle, qemu-io 7.2)\n")
        return 0
      case .option("h"):
        console.write(usage(programName))
        return 0
      case .option("U"): spec.forceShare = true
      case .option("object"):
        do {
          try objects.add(parser.optarg!, reporter: reporter, console: console)
        } catch {
          return error.status
        }
      case .option("image-opts"): imageOpts = true
      default:
        console.write(usage(programName))
        return 1
      }
    }
    let operands = Array(parser.operands)
    if operands.count > 1 {
      console.write(usage(programName))
      return 1
    }
    if spec.format != nil && imageOpts {
      reporter.error("--image-opts and -f are mutually exclusive")
      return 1
    }
    spec.node.readOnly = readOnly

    let session = IOSession(
      console: console, programName: programName, misalign: misalign, imageOpts: imageOpts)
    if let operand = operands.first {
      if imageOpts {
        session.mergeOptions(operand, into: &spec.options)
      } else {
        spec.filename = operand
      }
      guard await session.openImage(spec) else { return 1 }
    }

    var lastError: Int32 = 0
    if !commands.isEmpty {
      for command in commands where !session.quitRequested {
        let status = await session.execute(command)
        if status < 0 { lastError = status }
      }
    } else {
      while !session.quitRequested {
        console.write("\(programName)> ")
        console.flush()
        // qemu-io's event loop runs the completions that are ready before it
        // reads the next line: let requests that have not started yet run
        // (they do not suspend unless their I/O really waits), then report
        // those that finished.
        await Task.yield()
        session.aio.deliver()
        guard let line = await input.readLine() else { break }
        let status = await session.execute(line)
        if status < 0 { lastError = status }
      }
    }
    await session.closeImage()
    console.flush()
    return lastError < 0 ? 1 : 0
  }

  /// qemu-io's usage text.
  static func usage(_ name: String) -> String {
    """
    Usage: \(name) [OPTIONS]... [-c STRING]... [file]
    QEMU Disk exerciser

      --object OBJECTDEF   define an object such as 'secret' for
                           passwords and/or encryption keys
      --image-opts         treat file as option string
      -c, --cmd STRING     execute command with its arguments
                           from the given string
      -f, --format FMT     specifies the block driver to use
      -r, --read-only      export read-only
      -s, --snapshot       use snapshot file
      -n, --nocache        disable host cache, short for -t none
      -C, --copy-on-read   enable copy-on-read
      -m, --misalign       misalign allocations for O_DIRECT
      -k, --native-aio     use kernel AIO implementation
                           (Linux only, prefer use of -i)
      -i, --aio=MODE       use AIO mode (threads, native or io_uring)
      -t, --cache=MODE     use the given cache mode for the image
      -d, --discard=MODE   use the given discard mode for the image
      -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                           specify tracing options
                           see qemu-img(1) man page for full description
      -U, --force-share    force shared permissions
      -h, --help           display this help and exit
      -V, --version        output version information and exit

    See '\(name) -c help' for information on available commands.

    See <https://qemu.org/contribute/report-a-bug> for how to report bugs.
    More information on the QEMU project at <https://qemu.org>.

    """
  }
}
