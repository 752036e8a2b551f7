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

/// Thin blocking wrappers around the system calls on one open file: each
/// retries on EINTR and throws `Errno` on failure.
///
/// These block, so they never run on ``BlockActor``: the file driver calls
/// them inside ``FileIOPool/run(_:)``.
struct PosixFile: Sendable {
  /// The file descriptor.
  let fd: Int32

  /// The most segments one preadv/pwritev call takes (Linux's IOV_MAX).
  static let maxVectors = 1024

  /// The errno of the last failed call.
  static var lastError: Errno { Errno(rawValue: errno) }

  /// The facts about the file that fstat gives.
  struct Status: Sendable {
    /// Length in bytes.
    var size: Int64
    /// Bytes of storage allocated (st_blocks * 512).
    var allocatedBytes: Int64
    /// Whether it is a regular file.
    var isRegularFile: Bool
  }

  /// fstat(2).
  func status() throws -> Status {
    var info = stat()
    guard fstat(fd, &info) == 0 else { throw Self.lastError }
    return Status(
      size: Int64(info.st_size), allocatedBytes: Int64(info.st_blocks) * 512,
      isRegularFile: info.st_mode & 0o170000 == 0o100000)
  }

  /// Reads into `iov` at `offset` until it is full or the file ends, and
  /// returns the number of bytes read (QEMU's `handle_aiocb_rw`). With
  /// O_DIRECT, EINVAL after a short read means the end of the file was
  /// reached at an unaligned offset.
  func read(into iov: IOVector, at offset: Int64, direct: Bool) throws -> Int {
    var done = 0
    while done < iov.count {
      let count = transfer(
        iov.slice(done, iov.count - done), at: offset + Int64(done), write: false)
      if count > 0 {
        done += count
      } else if count == 0 {
        break
      } else if errno == EINTR {
        continue
      } else if errno == EINVAL && direct && done > 0 {
        break
      } else {
        throw Self.lastError
      }
    }
    return done
  }

  /// Writes all of `iov` at `offset`, continuing after short writes.
  func write(from iov: IOVector, at offset: Int64) throws {
    var done = 0
    while done < iov.count {
      let count = transfer(iov.slice(done, iov.count - done), at: offset + Int64(done), write: true)
      if count > 0 {
        done += count
      } else if count == 0 {
        // No progress and no error: the file system cannot take more.
        throw Errno.noSpace
      } else if errno != EINTR {
        throw Self.lastError
      }
    }
  }

  /// One pread/pwrite (one segment) or preadv/pwritev (up to ``maxVectors``
  /// segments); returns the byte count or -1 with errno set.
  private func transfer(_ iov: IOVector, at offset: Int64, write: Bool) -> Int {
    iov.withUnsafeSegments { segments in
      if segments.count == 1 {
        let segment = segments[0]
        return write
          ? pwrite(fd, segment.baseAddress, segment.count, off_t(offset))
          : pread(fd, segment.baseAddress, segment.count, off_t(offset))
      }
      var vectors = segments.prefix(Self.maxVectors).map {
        iovec(iov_base: $0.baseAddress, iov_len: $0.count)
      }
      return vectors.withUnsafeMutableBufferPointer { buffer in
        write
          ? pwritev(fd, buffer.baseAddress, Int32(buffer.count), off_t(offset))
          : preadv(fd, buffer.baseAddress, Int32(buffer.count), off_t(offset))
      }
    }
  }

  /// One pread(2) into `buffer` at `offset`, retried on EINTR; the byte count.
  func readOnce(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws -> Int {
    while true {
      let count = pread(fd, buffer.baseAddress, buffer.count, off_t(offset))
      if count >= 0 { return count }
      if errno != EINTR { throw Self.lastError }
    }
  }

  /// fdatasync(2).
  func dataSync() throws {
    while fdatasync(fd) != 0 {
      if errno != EINTR { throw Self.lastError }
    }
  }

  /// fsync(2).
  func sync() throws {
    while fsync(fd) != 0 {
      if errno != EINTR { throw Self.lastError }
    }
  }

  /// ftruncate(2).
  func setLength(_ length: Int64) throws {
    while ftruncate(fd, off_t(length)) != 0 {
      if errno != EINTR { throw Self.lastError }
    }
  }

  /// fallocate(2). "Not supported" in any of its spellings (EOPNOTSUPP,
  /// ENOSYS, ENODEV, ENOTTY) is thrown as ENOTSUP, as QEMU's `translate_err`.
  func fallocate(mode: Int32, offset: Int64, length: Int64) throws {
    while cfs_fallocate(fd, mode, offset, length) != 0 {
      switch errno {
      case EINTR: continue
      case EOPNOTSUPP, ENOSYS, ENODEV, ENOTTY: throw BlockError.notSupportedCode
      default: throw Self.lastError
      }
    }
  }

  /// posix_fallocate(3), which falls back to writing zeroes where the file
  /// system cannot allocate.
  func posixFallocate(offset: Int64, length: Int64) throws {
    while true {
      let result = posix_fallocate(fd, off_t(offset), off_t(length))
      if result == 0 { return }
      if result != EINTR { throw Errno(rawValue: result) }
    }
  }

  /// lseek(2) with `whence`; the resulting offset.
  func seek(_ offset: Int64, whence: Int32) throws -> Int64 {
    let result = lseek(fd, off_t(offset), whence)
    guard result >= 0 else { throw Self.lastError }
    return Int64(result)
  }

  /// close(2). The descriptor is gone afterwards even when this fails.
  func close() {
    #if canImport(Glibc)
      _ = Glibc.close(fd)
    #elseif canImport(Musl)
      _ = Musl.close(fd)
    #else
      _ = Darwin.close(fd)
    #endif
  }
}
