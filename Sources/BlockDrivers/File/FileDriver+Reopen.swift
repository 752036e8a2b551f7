import BlockCore
import CFileSupport
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

extension FileDriver {
  /// Switches O_DIRECT on the open descriptor (QEMU's `raw_reopen_prepare`
  /// with `fcntl(F_SETFL)`) and probes the alignment it needs.
  public func reopenCache(_ node: BlockNode, direct: Bool) async throws {
    guard direct != self.direct, let file else { return }
    let flags = fcntl(file.fd, F_GETFL)
    let wanted = direct ? flags | cfs_o_direct() : flags & ~cfs_o_direct()
    guard flags >= 0, fcntl(file.fd, F_SETFL, wanted) == 0 else {
      let code = Errno(rawValue: errno)
      throw BlockError(code, "Could not set AIO state: \(Errno.describe(code))")
    }
    do {
      let alignment = direct ? try DirectIOAlignment.probe(file) : (request: 1, buffer: 1)
      requestAlignment = alignment.request
      bufferAlignment = alignment.buffer
    } catch {
      _ = fcntl(file.fd, F_SETFL, flags)
      throw error
    }
    self.direct = direct
  }
}
