import Foundation

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A size-limited tmpfs mounted on a fresh temporary directory, for tests
/// that must run out of space for real (ENOSPC from the kernel, not an
/// injected error). Mounting needs root (`CAP_SYS_ADMIN`); see
/// ``FilesystemRequirement`` for skipping tests where it is impossible.
///
/// The filesystem is unmounted and its directory removed by ``unmount()``
/// or, at the latest, when the object is released; a file still open on it
/// does not keep it mounted (the mount is then detached lazily).
public final class SmallFilesystem: @unchecked Sendable {
  /// The directory the filesystem is mounted on.
  public let path: String
  private let lock = NSLock()
  private var mounted = true

  /// Why a filesystem could not be mounted.
  public struct MountError: Error, CustomStringConvertible {
    /// The error number `mount(2)` (or `mkdtemp`) set.
    public var code: Int32
    /// What failed, with the reason.
    public var description: String
  }

  /// Mounts a tmpfs of `kibibytes` KiB (a multiple of the page size) on a
  /// new directory under the temporary directory.
  public init(kibibytes: Int) throws {
    let temporary = FileManager.default.temporaryDirectory.path
    var template = Array("\(temporary)/spindle-full-XXXXXX".utf8CString)
    guard let made = mkdtemp(&template) else {
      throw MountError(code: errno, description: "mkdtemp: \(String(cString: strerror(errno)))")
    }
    let directory = String(cString: made)
    guard mount("tmpfs", directory, "tmpfs", 0, "size=\(kibibytes)k,mode=0700") == 0 else {
      let code = errno
      rmdir(directory)
      throw MountError(
        code: code,
        description: "cannot mount a tmpfs on \(directory): \(String(cString: strerror(code)))")
    }
    path = directory
  }

  deinit { unmount() }

  /// The path of `name` on the filesystem.
  public func path(_ name: String) -> String { "\(path)/\(name)" }

  /// The bytes still free for files (`statvfs`).
  public var availableBytes: Int {
    var stats = statvfs()
    guard statvfs(path, &stats) == 0 else { return 0 }
    return Int(stats.f_bavail) * Int(stats.f_frsize)
  }

  /// Unmounts the filesystem (lazily if a file on it is still open) and
  /// removes its directory; later calls do nothing.
  public func unmount() {
    let wasMounted = lock.withLock {
      defer { mounted = false }
      return mounted
    }
    guard wasMounted else { return }
    if umount(path) != 0 { umount2(path, Int32(MNT_DETACH)) }
    rmdir(path)
  }
}
