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
/// The standard streams are buffered as a C program's (QEMU's tools print
/// with stdio): standard output is line-buffered on a terminal and fully
/// buffered otherwise (written out in whole blocks of the descriptor's
/// `st_blksize`, as glibc does), standard error is not buffered, and
/// standard output is flushed where QEMU calls `fflush` (prompts, progress)
/// and at exit. So with both streams on one pipe the text arrives in QEMU's
/// order: error messages before the output that is still buffered.
@BlockActor
public final class Console {
  private enum Destination {
    case standardStreams
    case capture
  }

  /// How standard output is buffered (C's `_IOLBF` or `_IOFBF`).
  private enum Buffering {
    /// Written at each newline (a terminal), or when this many bytes of
    /// a line are waiting.
    case line(Int)
    /// Written in whole blocks of this size (a pipe or a file).
    case full(Int)
  }

  private let destination: Destination
  private let buffering: Buffering
  private var pending: [UInt8] = []
  /// Everything written to standard output (capture mode only).
  public private(set) var output = ""
  /// Everything written to standard error (capture mode only).
  public private(set) var error = ""

  private init(_ destination: Destination, buffering: Buffering = .line(8192)) {
    self.destination = destination
    self.buffering = buffering
  }

  /// A console writing to file descriptors 1 and 2, standard output
  /// buffered as C's stdio would buffer it for what descriptor 1 is.
  public static func standardStreams() -> Console {
    // glibc's buffer: the descriptor's preferred block size, else BUFSIZ.
    var info = stat()
    let blockSize = fstat(1, &info) == 0 && info.st_blksize > 0 ? Int(info.st_blksize) : 8192
    let buffering: Buffering = isatty(1) != 0 ? .line(blockSize) : .full(blockSize)
    return Console(.standardStreams, buffering: buffering)
  }

  /// A console that keeps the text in ``output`` and ``error``.
  public static func capture() -> Console { Console(.capture) }

  /// Writes to standard output (buffered).
  func write(_ text: String) {
    switch destination {
    case .capture:
      output += text
    case .standardStreams:
      pending.append(contentsOf: text.utf8)
      switch buffering {
      case .line(let blockSize):
        // Everything up to the last newline goes out; a partial line waits
        // until it fills the buffer.
        if let newline = pending.lastIndex(of: UInt8(ascii: "\n")) {
          emit(count: newline + 1)
        }
        if pending.count >= blockSize { flush() }
      case .full(let blockSize):
        // A full buffer goes out, and so do any further whole blocks; the
        // rest stays buffered.
        let whole = pending.count / blockSize * blockSize
        if whole > 0 { emit(count: whole) }
      }
    }
  }

  /// Writes to standard error at once (unbuffered; standard output keeps
  /// what it has buffered, as in C).
  func writeError(_ text: String) {
    switch destination {
    case .capture:
      error += text
    case .standardStreams:
      var bytes = Array(text.utf8)
      _ = bytes.withUnsafeMutableBytes { writeAll(fd: 2, buffer: UnsafeRawBufferPointer($0)) }
    }
  }

  /// Writes buffered standard output (C's `fflush(stdout)`).
  func flush() {
    emit(count: pending.count)
  }

  /// Writes the first `count` buffered bytes.
  private func emit(count: Int) {
    guard count > 0 else { return }
    _ = pending.withUnsafeMutableBytes {
      writeAll(fd: 1, buffer: UnsafeRawBufferPointer(rebasing: $0[..<count]))
    }
    pending.removeFirst(count)
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
