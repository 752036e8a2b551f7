import BlockCore
import SystemPackage

extension NBDError {
  /// QEMU's `system_errno_to_nbd_errno`: the wire error for an engine error.
  public init(_ code: Errno) {
    switch code {
    case .notPermitted, .readOnlyFileSystem: self = .perm
    case .ioError: self = .io
    case .noMemory: self = .noMemory
    case .noSpace, .diskQuotaExceeded, .fileTooLarge: self = .noSpace
    case .overflow: self = .overflow
    case .notSupported: self = .notSupported
    case .socketShutdown: self = .shutdown
    default: self = .invalid
    }
  }

  /// The wire error for any error the engine throws.
  public static func of(_ error: any Error) -> NBDError {
    (error as? BlockError).map { NBDError($0.code) } ?? .io
  }
}

extension NBDError {
  /// QEMU's `nbd_errno_to_system_errno`: the engine error for a wire error a
  /// server sent (unknown values are EINVAL).
  public static func blockError(wire value: UInt32) -> BlockError {
    let code: Errno =
      switch NBDError(rawValue: value) {
      case .perm: .notPermitted
      case .io: .ioError
      case .noMemory: .noMemory
      case .noSpace: .noSpace
      case .overflow: .overflow
      case .notSupported: .notSupported
      case .shutdown: .socketShutdown
      case .invalid, nil: .invalidArgument
      }
    return BlockError(code)
  }
}
