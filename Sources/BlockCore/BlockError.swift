import SystemPackage

/// The error every Spindle operation throws: an errno-style code, a message, and
/// where it happened.
///
/// The code follows QEMU's block layer conventions (`EIO` for out-of-range
/// requests at the backend, `ENOMEDIUM` for a node without medium, `EPERM` for
/// writes to read-only nodes, `ENOTSUP` for operations a driver cannot do,
/// `EINVAL` for malformed requests). Tools print `message`, or the code's
/// `strerror` text when a message adds nothing (qemu-io prints
/// `write failed: Input/output error`).
public struct BlockError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The errno-style code.
  public var code: Errno
  /// A human-readable explanation; empty when `strerror(code)` says it all.
  public var message: String
  /// Where the error arose: a node name, a file name or an operation.
  public var context: String

  /// Creates an error with a code, an optional message and an optional context.
  public init(_ code: Errno, _ message: String = "", context: String = "") {
    self.code = code
    self.message = message
    self.context = context
  }

  /// The system's text for the code, as `strerror` prints it.
  public var codeDescription: String { Errno.describe(code) }

  public var description: String {
    var text = message.isEmpty ? codeDescription : message
    if !context.isEmpty { text = "\(context): \(text)" }
    return text
  }
}

extension Errno {
  /// The C library's `strerror` text for an errno code (e.g. "Input/output error").
  public static func describe(_ code: Errno) -> String {
    #if canImport(Glibc)
      return String(cString: Glibc.strerror(code.rawValue))
    #elseif canImport(Musl)
      return String(cString: Musl.strerror(code.rawValue))
    #else
      return String(cString: Darwin.strerror(code.rawValue))
    #endif
  }
}

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

extension BlockError {
  /// Errno for "operation not supported" as QEMU uses it (Linux `ENOTSUP` == `EOPNOTSUPP`).
  public static let notSupportedCode = Errno.notSupported
  /// `ENOMEDIUM` is Linux-only; swift-system does not name it.
  public static let noMediumCode = Errno(rawValue: 123)

  /// A driver or engine path that cannot perform the operation.
  public static func notSupported(_ message: String = "") -> BlockError {
    BlockError(notSupportedCode, message)
  }
}
