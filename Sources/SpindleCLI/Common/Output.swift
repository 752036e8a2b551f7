import BlockCore

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Where a tool's text goes: the process's standard output and error, or two
/// strings (tests run commands in-process and compare what they printed).
///
/// Standard output is buffered (a benchmark or a large hexdump prints a lot)
/// and flushed before anything goes to standard error, before the tool waits
/// for input and when it exits, so that a terminal shows both streams in the
/// order they were written.
@BlockActor
public final class Console {
  private enum Destination {
    case standardStreams
    case capture
  }

  private let destination: Destination
  private var pending: [UInt8] = []
  /// Everything written to standard output (capture mode only).
  public private(set) var output = ""
  /// Everything written to standard error (capture mode only).
  public private(set) var error = ""

  private init(_ destination: Destination) {
    self.destination = destination
  }

  /// A console writing to file descriptors 1 and 2.
  public static func standardStreams() -> Console { Console(.standardStreams) }

  /// A console that keeps the text in ``output`` and ``error``.
  public static func capture() -> Console { Console(.capture) }

  /// Writes to standard output.
  func write(_ text: String) {
    switch destination {
    case .capture:
      output += text
    case .standardStreams:
      pending.append(contentsOf: text.utf8)
      if pending.count >= 1 << 16 { flush() }
    }
  }

  /// Writes to standard error, after flushing standard output.
  func writeError(_ text: String) {
    switch destination {
    case .capture:
      error += text
    case .standardStreams:
      flush()
      var bytes = Array(text.utf8)
      _ = bytes.withUnsafeMutableBytes { writeAll(fd: 2, buffer: UnsafeRawBufferPointer($0)) }
    }
  }

  /// Writes buffered standard output.
  func flush() {
    guard !pending.isEmpty else { return }
    _ = pending.withUnsafeMutableBytes { writeAll(fd: 1, buffer: UnsafeRawBufferPointer($0)) }
    pending.removeAll(keepingCapacity: true)
  }
}

/// Messages with a program-name prefix, as QEMU's `error_report` and
/// `warn_report` print them (`qemu-io: can't open: ...`).
@BlockActor
struct Reporter {
  /// The console written to.
  let console: Console
  /// The prefix: the name the tool was invoked by (`qemu-io`, `qemu-img`).
  let programName: String

  /// `error_report`: `name: message` on standard error.
  func error(_ message: String) {
    console.writeError("\(programName): \(message)\n")
  }

  /// qemu-img's `error_exit`: the message, then the pointer to `--help`.
  /// Returns the error that ends the command with status 1.
  @discardableResult
  func usageError(_ message: String) -> CommandExit {
    error(message)
    console.writeError("Try 'qemu-img --help' for more information\n")
    return CommandExit()
  }

  /// `warn_report`: `name: warning: message` on standard error.
  func warning(_ message: String) {
    console.writeError("\(programName): warning: \(message)\n")
  }
}

/// Thrown by a command once it has reported why it stops; `status` is its
/// exit status.
struct CommandExit: Error {
  var status: Int32 = 1
}

/// A qemu-img subcommand: parses its arguments (`arguments[0]` is its name)
/// and runs, reporting through `reporter`; ``run(arguments:programName:console:)``
/// turns what it throws into the exit status (a ``CommandExit``'s, else 1).
@BlockActor
protocol ImageSubcommand {
  /// Parses the options as qemu-img does, runs the command and returns its
  /// exit status; throws ``CommandExit`` (or any error, meaning status 1)
  /// after reporting a failure.
  static func parseAndRun(_ arguments: [String], reporter: Reporter, console: Console)
    async throws -> Int32
}

extension ImageSubcommand {
  /// Runs the command and returns its exit status.
  static func run(arguments: [String], programName: String, console: Console) async -> Int32 {
    let reporter = Reporter(console: console, programName: programName)
    do {
      return try await parseAndRun(arguments, reporter: reporter, console: console)
    } catch let exit as CommandExit {
      return exit.status
    } catch {
      return 1
    }
  }
}
