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
