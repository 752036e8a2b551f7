import BlockCore
import BlockDrivers
import NBD

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// The `spindle` multi-call tool: dispatches on the name it was invoked by and
/// on its first argument.
///
/// - invoked as `qemu-io` (a link): qemu-io, messages prefixed `qemu-io:`;
/// - invoked as `qemu-img`: qemu-img, every command of ``ImageTool``;
/// - `spindle io ...`: qemu-io, named `qemu-io` in messages and the prompt;
/// - `spindle img ...`: qemu-img (its global options, then a command);
/// - `spindle COMMAND ...` for any qemu-img command (`spindle info x.qcow2`,
///   `spindle convert ...`): that qemu-img command.
public enum Spindle {
  /// The version printed by `--version`.
  public static let version = "0.1.0"

  /// Runs the tool with `arguments` (including the program name) on the
  /// process's standard streams and returns the exit status.
  /// The signal mask the program started with (see
  /// ``recordStartupSignalState()``); empty until recorded.
  nonisolated(unsafe) static var startupSignalMask = sigset_t()

  /// Records the signal mask the program inherited, for `sigraise`. Call
  /// first thing on the main thread, before any task runs: the Swift runtime's
  /// threads block signals that a C program's single thread would not.
  public static func recordStartupSignalState() {
    pthread_sigmask(SIG_SETMASK, nil, &startupSignalMask)
  }

  /// The arguments the process was started with, when it runs as the
  /// `spindle` executable (``main(_:)``); nil for commands run in-process.
  /// `serve --fork` starts the daemon by running them again.
  nonisolated(unsafe) static var processArguments: [String]?

  public static func main(_ arguments: [String]) async -> Int32 {
    processArguments = arguments
    // Like QEMU's tools: a closed pipe makes writes fail instead of killing us.
    signal(SIGPIPE, SIG_IGN)
    return await run(arguments, console: .standardStreams(), input: StandardInput())
  }

  /// Runs the tool with `arguments` (including the program name), writing to
  /// `console` and reading commands from `input`; returns the exit status.
  /// Tests run commands in-process through this.
  @BlockActor
  public static func run(_ arguments: [String], console: Console, input: any LineInput) async
    -> Int32
  {
    NBDClient.register()
    let invokedAs = arguments.first ?? "spindle"
    let name = invokedAs.split(separator: "/").last.map(String.init) ?? invokedAs
    let status: Int32
    switch name {
    case "qemu-io":
      status = await IOTool.run(
        arguments: arguments, programName: name, console: console, input: input)
    case "qemu-img":
      status = await ImageTool.run(arguments: arguments, programName: name, console: console)
    case "qemu-nbd":
      status = await ServeCommand.run(arguments: arguments, console: console)
    default:
      status = await subcommand(Array(arguments.dropFirst()), console: console, input: input)
    }
    console.flush()
    return status
  }

  @BlockActor
  private static func subcommand(_ arguments: [String], console: Console, input: any LineInput)
    async -> Int32
  {
    guard let command = arguments.first else {
      console.writeError(usage)
      return 1
    }
    let rest = Array(arguments.dropFirst())
    switch command {
    case "io":
      return await IOTool.run(
        arguments: ["qemu-io"] + rest, programName: "qemu-io", console: console, input: input)
    case "img":
      return await ImageTool.run(
        arguments: ["qemu-img"] + rest, programName: "qemu-img", console: console)
    case "serve":
      return await ServeCommand.run(arguments: ["qemu-nbd"] + rest, console: console)
    case "--version", "-V", "version":
      console.write("spindle version \(version)\n")
      return 0
    case "--help", "-h", "help":
      console.write(usage)
      return 0
    case _ where ImageTool.commands.contains(command):
      return await ImageTool.run(
        arguments: ["qemu-img"] + arguments, programName: "qemu-img", console: console)
    default:
      console.writeError("spindle: unknown command '\(command)'\n\(usage)")
      return 1
    }
  }

  /// `spindle --help`: every command.
  static var usage: String {
    let supported = ImageTool.commands.filter { !ImageTool.unsupportedCommands.contains($0) }
    let commands = supported.map { name in
      "  " + name.padding(toLength: 12, withPad: " ", startingAt: 0)
        + (commandSummaries[name] ?? "")
    }
    return """
      usage: spindle COMMAND [ARGS...]

      Spindle \(version): a block-device I/O layer with qemu-img and qemu-io
      compatible commands.

      Image commands (qemu-img 7.2's options; 'spindle img --help' shows them):
      \(commands.joined(separator: "\n"))

      Other commands:
        io [OPTIONS] [-c CMD]... [FILE]
                    qemu-io: exercise an image with I/O commands
        img [-h | -V | -T TRACE] COMMAND [OPTIONS]
                    qemu-img: the commands above
        serve [OPTIONS] FILE
                    qemu-nbd: serve an image over NBD ('spindle serve --help')
        version     print the version (also --version, -V)
        help        print this help (also --help, -h)

      Invoked through a link named qemu-io, qemu-img or qemu-nbd, spindle behaves as that tool.

      """
  }

  /// One line about each qemu-img command Spindle has.
  static let commandSummaries = [
    "amend": "change the format-specific options of an image",
    "bench": "run a simple I/O benchmark on an image",
    "check": "check an image for errors, and repair them (-r)",
    "commit": "commit an image's changes into its backing file",
    "compare": "compare the contents of two images",
    "convert": "copy images into a new or existing image, in any format",
    "create": "create a new image",
    "dd": "copy an image's blocks as dd(1) does",
    "info": "show an image's format, size and options",
    "map": "show where an image's data is",
    "measure": "calculate the file size an image needs",
    "rebase": "change an image's backing file",
    "resize": "grow or shrink an image",
  ]
}

/// Writes a whole buffer to a file descriptor, retrying on EINTR and short writes.
@discardableResult
func writeAll(fd: Int32, buffer: UnsafeRawBufferPointer) -> Bool {
  var done = 0
  while done < buffer.count {
    let written = write(fd, buffer.baseAddress! + done, buffer.count - done)
    if written < 0 {
      if errno == EINTR { continue }
      return false
    }
    done += written
  }
  return true
}
