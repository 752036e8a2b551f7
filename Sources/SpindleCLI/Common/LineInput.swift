import Dispatch

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// A source of command lines (qemu-io reads commands from standard input when
/// none is given with `-c`).
public protocol LineInput: AnyObject, Sendable {
  /// The next line without its newline, or nil at end of input.
  func readLine() async -> String?
}

/// Splits bytes into lines the way qemu-io's `fgets(line, 1024, stdin)` does:
/// a line longer than 1023 bytes arrives as several commands, a final line
/// without a newline is still a line, and only the newline is removed.
struct LineSplitter {
  /// The size of qemu-io's line buffer (`MAXREADLINESZ`), including the NUL.
  static let bufferSize = 1024

  private var buffer: [UInt8] = []

  /// Adds bytes read from the input.
  mutating func append(_ bytes: some Sequence<UInt8>) { buffer.append(contentsOf: bytes) }

  /// The next complete line, or, at end of input, what is left; nil when more
  /// input is needed (or nothing is left at the end).
  mutating func nextLine(atEnd: Bool) -> String? {
    let limit = Self.bufferSize - 1
    let newline = buffer.prefix(limit).firstIndex(of: UInt8(ascii: "\n"))
    var take: Int
    if let newline {
      take = newline + 1
    } else if buffer.count >= limit {
      take = limit
    } else if atEnd && !buffer.isEmpty {
      take = buffer.count
    } else {
      return nil
    }
    var line = Array(buffer[..<take])
    buffer.removeFirst(take)
    if line.last == UInt8(ascii: "\n") { line.removeLast() }
    return String(decoding: line, as: UTF8.self)
  }
}

/// Lines from a string (tests, and scripts given in-process).
public final class StringLineInput: LineInput, @unchecked Sendable {
  // Only touched by one command loop at a time.
  private var splitter = LineSplitter()

  /// Input consisting of `text`.
  public init(_ text: String) {
    splitter.append(text.utf8)
  }

  public func readLine() async -> String? {
    splitter.nextLine(atEnd: true)
  }
}

/// Lines from file descriptor 0, read on a dispatch queue so that the block
/// graph's executor is never blocked by a terminal or a pipe.
public final class StandardInput: LineInput, @unchecked Sendable {
  // Only touched by one command loop at a time, one read at a time.
  private var splitter = LineSplitter()
  private var atEnd = false
  private let queue = DispatchQueue(label: "spindle.stdin")

  /// Standard input.
  public init() {}

  public func readLine() async -> String? {
    while true {
      if let line = splitter.nextLine(atEnd: atEnd) { return line }
      if atEnd { return nil }
      let chunk: [UInt8] = await withCheckedContinuation { continuation in
        queue.async {
          var bytes = [UInt8](repeating: 0, count: 4096)
          var count: Int
          repeat {
            count = bytes.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
          } while count < 0 && errno == EINTR
          continuation.resume(returning: Array(bytes.prefix(max(count, 0))))
        }
      }
      if chunk.isEmpty { atEnd = true } else { splitter.append(chunk) }
    }
  }
}
