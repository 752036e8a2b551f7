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
  /// QEMU's `raw_reopen_prepare` and the descriptor work of its
  /// `raw_check_perm`: `drop-cache` and `x-check-cache-dropped` may change
  /// (and are accepted and ignored, as at open); `filename`, `locking` and
  /// `aio` must stay. A change of read-only opens the file again with the
  /// new access mode and moves the image locks to the new permissions,
  /// failing as QEMU does when the file cannot be opened for writing or
  /// another process holds a conflicting lock; a change of `cache.direct`
  /// switches O_DIRECT on the descriptor and probes the alignment it needs.
  public func prepareReopen(_ node: BlockNode, _ request: inout BlockReopenRequest) async throws
    -> any BlockReopenChange
  {
    var options = DriverOptions(request.options)
    _ = try options.takeBool("drop-cache", default: true)
    _ = try options.takeBool("x-check-cache-dropped", default: false)
    request.options = options.values
    let readOnly = request.nodeOptions.readOnly
    let direct = request.nodeOptions.cache.direct
    let current = try openFile()
    if readOnly != node.isReadOnly {
      return try await prepareAccessChange(readOnly: readOnly, direct: direct)
    }
    guard direct != self.direct else { return UnchangedReopen() }
    let alignment = try await switchDirect(current, to: direct)
    return ClosureReopen(
      commit: { [self] in
        self.direct = direct
        (requestAlignment, bufferAlignment) = alignment
      },
      abort: { [self] in _ = try? await switchDirect(current, to: self.direct) })
  }

  /// Sets or clears O_DIRECT on `file` and probes the alignment it needs.
  private func switchDirect(_ file: PosixFile, to direct: Bool) async throws -> (Int64, Int) {
    try await FileIOPool.run { () throws -> (Int64, Int) in
      let flags = fcntl(file.fd, F_GETFL)
      let wanted = direct ? flags | cfs_o_direct() : flags & ~cfs_o_direct()
      guard flags >= 0, fcntl(file.fd, F_SETFL, wanted) == 0 else {
        let code = Errno(rawValue: errno)
        throw BlockError(code, "Could not set AIO state: \(Errno.describe(code))")
      }
      do {
        let alignment = direct ? try DirectIOAlignment.probe(file) : (request: 1, buffer: 1)
        return (alignment.request, alignment.buffer)
      } catch {
        _ = fcntl(file.fd, F_SETFL, flags)
        throw error
      }
    }
  }

  /// Opens the file again read-only or read-write and takes the matching
  /// permissions; the commit moves the locks to the new descriptor and
  /// closes the old one.
  private func prepareAccessChange(readOnly: Bool, direct: Bool) async throws
    -> any BlockReopenChange
  {
    let filename = filename
    let (newFile, alignment) = try await FileIOPool.run { () throws -> (PosixFile, (Int64, Int)) in
      let file = try OpenedFile.openFile(filename, readOnly: readOnly, direct: direct)
      do {
        let alignment = direct ? try DirectIOAlignment.probe(file) : (request: 1, buffer: 1)
        return (file, (alignment.request, alignment.buffer))
      } catch {
        file.close()
        throw error
      }
    }
    let oldPermissions = permissions
    let newPermissions = ImagePermissions.forOpen(
      readOnly: readOnly, forceShare: sharing.forceShare && readOnly,
      sharesWrites: sharing.writes)
    do {
      try await setPermissions(newPermissions)
    } catch {
      _ = try? await FileIOPool.run { newFile.close() }
      throw error
    }
    return ClosureReopen(
      commit: { [self] in await self.adopt(newFile, direct: direct, alignment: alignment) },
      abort: { [self] in
        _ = try? await FileIOPool.run { newFile.close() }
        try? await self.setPermissions(oldPermissions)
      })
  }

  /// Makes `newFile` the node's descriptor: closes the old one (which
  /// releases its locks) and locks the new one with the permissions held.
  private func adopt(_ newFile: PosixFile, direct: Bool, alignment: (Int64, Int)) async {
    let old = file
    let locking = lock != nil
    let permissions = permissions
    let filename = filename
    lock =
      (try? await FileIOPool.run { () -> ImageLock? in
        old?.close()
        guard locking else { return nil }
        var lock = ImageLock(fd: newFile.fd)
        try? lock.change(
          to: permissions, from: ImagePermissions(perm: [], shared: .all), filename: filename)
        return lock
      }) ?? nil
    file = newFile
    self.direct = direct
    (requestAlignment, bufferAlignment) = alignment
  }
}
