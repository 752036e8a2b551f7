import BlockCore
import BlockDrivers
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// The state of one `spindle io` run: the open image, where text goes, and the
/// asynchronous requests in flight. Commands run one at a time on
/// ``BlockActor``; see ``AIOQueue`` for when asynchronous requests start and
/// report.
@BlockActor
final class IOSession {
  /// The console written to.
  let console: Console
  /// `qemu-io: ` messages.
  let reporter: Reporter
  /// The open image, if any.
  var backend: BlockBackend?
  /// `-m`: buffers start 16 bytes past an aligned address.
  let misalign: Bool
  /// `--image-opts`: `open` takes an option string instead of `-o`.
  let imageOpts: Bool
  /// Set by `quit`.
  var quitRequested = false
  /// Asynchronous requests.
  let aio: AIOQueue
  /// The command table, by name.
  let commands: [IOCommandInfo]

  init(console: Console, programName: String, misalign: Bool, imageOpts: Bool) {
    self.console = console
    self.reporter = Reporter(console: console, programName: programName)
    self.misalign = misalign
    self.imageOpts = imageOpts
    self.aio = AIOQueue(console: console)
    self.commands = IOCommandInfo.all.sorted {
      $0.name.utf8.lexicographicallyPrecedes($1.name.utf8)
    }
  }

  /// QEMU's `find_command`: by name or alternative name.
  func findCommand(_ name: String) -> IOCommandInfo? {
    commands.first { $0.name == name || $0.altName == name }
  }

  /// Runs one command line (QEMU's `qemuio_command`): splits it at spaces,
  /// finds the command, checks that a file is open, the argument count and the
  /// write permission, then runs it. Returns 0 or a negative errno.
  func execute(_ line: String) async -> Int32 {
    let words = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
    guard let name = words.first else { return 0 }
    guard let command = findCommand(name) else {
      console.writeError("command \"\(name)\" not found\n")
      return -EINVAL
    }
    if !command.isGlobal && !command.noFileOK && backend == nil {
      console.writeError("no file open, try 'help open'\n")
      return -EINVAL
    }
    let count = words.count - 1
    if count < command.argMin || (command.argMax != -1 && count > command.argMax) {
      let expected: String
      if command.argMax == -1 {
        expected = "at least \(command.argMin) arguments"
      } else if command.argMin == command.argMax {
        expected = "\(command.argMin) arguments"
      } else {
        expected = "between \(command.argMin) and \(command.argMax) arguments"
      }
      console.writeError("bad argument count \(count) to \(name), expected \(expected)\n")
      return -EINVAL
    }
    if command.needsWrite, let backend, backend.root.isInserted, backend.root.isReadOnly {
      // QEMU asks for the write permission before running the command.
      reporter.error("Block node is read-only")
      return -EPERM
    }
    return await command.run(self, words)
  }

  /// Prints the usage line of a command (QEMU's `qemuio_command_usage`).
  func usage(_ command: IOCommandInfo) {
    console.write("\(command.name) \(command.args ?? "(null)") -- \(command.oneline)\n")
  }

  /// A getopt parser over a command's words that reports errors as glibc does.
  func options(_ words: [String], _ spec: String) -> Getopt {
    let console = self.console
    return Getopt(arguments: words, options: spec) { console.writeError($0) }
  }

  /// The open backend; commands that need one are only run when it exists.
  var activeBackend: BlockBackend { backend! }

  /// Closes the image after completing every asynchronous request (QEMU's
  /// `blk_unref`).
  func closeImage() async {
    await aio.drain()
    if let backend {
      self.backend = nil
      await backend.close()
    }
  }
}

/// The negative errno of an error thrown by the engine (EIO for anything that
/// is not a ``BlockError``).
func errnoCode(_ error: any Error) -> Int32 {
  if let error = error as? BlockError { return error.code.rawValue }
  return EIO
}

/// `strerror` of an error's code.
func errorText(_ error: any Error) -> String {
  Errno.describe(Errno(rawValue: errnoCode(error)))
}

/// qemu-io's `print_cvtnum_err`.
func numberErrorText(_ error: NumberError, _ argument: String) -> String {
  switch error {
  case .invalid:
    "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- \(argument)\n"
  case .range:
    "Parsing error: argument too large -- \(argument)\n"
  }
}

extension IOSession {
  /// qemu-io's `cvtnum`: a size (see ``parseQEMUSize(_:)``) that fits in
  /// `Int64`, with QEMU's deprecation warning for hex with a suffix. On failure
  /// the error is printed and nil returned.
  func number(_ text: String) -> Int64? {
    switch parseQEMUSize(text) {
    case .success(let size):
      if size.hexWithSuffix {
        reporter.warning("Using a multiplier suffix on hex numbers is deprecated: \(text)")
      }
      guard size.value <= UInt64(Int64.max) else {
        console.write(numberErrorText(.range, text))
        return nil
      }
      return Int64(size.value)
    case .failure(let error):
      console.write(numberErrorText(error, text))
      return nil
    }
  }

  /// qemu-io's `parse_pattern`: a C integer (any base) from 0 to 255.
  func pattern(_ text: String) -> UInt8? {
    let (value, complete) = parseCLong(text)
    guard value >= 0, value <= 255, complete else {
      console.write("\(text) is not a valid pattern byte\n")
      return nil
    }
    return UInt8(value)
  }
}
