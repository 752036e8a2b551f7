import BlockCore
import BlockDrivers

/// The `spindle` multi-call tool: dispatches on the name it was invoked by and
/// on its first argument.
public enum Spindle {
  /// The version printed by `--version`.
  public static let version = "0.1.0"

  /// Runs the tool with `arguments` (including the program name) and returns
  /// the exit status.
  public static func main(_ arguments: [String]) async -> Int32 {
    let args = Array(arguments.dropFirst())
    guard let command = args.first else {
      print(usage)
      return 1
    }
    switch command {
    case "--version", "-V", "version":
      print("spindle version \(version)")
      return 0
    case "--help", "-h", "help":
      print(usage)
      return 0
    default:
      printError("spindle: unknown command '\(command)'\n\(usage)")
      return 1
    }
  }

  static let usage = """
    usage: spindle COMMAND [ARGS...]

    Spindle \(version): a block-device I/O layer with qemu-img, qemu-io and
    qemu-nbd compatible commands.

    Commands:
      --version        print the version
      --help           print this help
    """
}

/// Writes a line to standard error.
func printError(_ text: String) {
  var stream = StandardError()
  print(text, to: &stream)
}

/// Standard error as a `TextOutputStream`.
struct StandardError: TextOutputStream {
  mutating func write(_ string: String) {
    var bytes = Array(string.utf8)
    _ = bytes.withUnsafeMutableBytes { buffer in
      writeAll(fd: 2, buffer: UnsafeRawBufferPointer(buffer))
    }
  }
}

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Writes a whole buffer to a file descriptor, retrying on EINTR and short writes.
@discardableResult
func writeAll(fd: Int32, buffer: UnsafeRawBufferPointer) -> Bool {
  var done = 0
  while done < buffer.count {
    let written = Glibc.write(fd, buffer.baseAddress! + done, buffer.count - done)
    if written < 0 {
      if errno == EINTR { continue }
      return false
    }
    done += written
  }
  return true
}
