import BlockCore
import CRBD
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

extension RBDDriver {
  /// What a request does (QEMU's `RBDAIOCmd`, whose numbers its error
  /// reports print).
  enum Command: Int {
    case read, write, discard, flush, writeZeroes
  }

  public func read(
    _ node: BlockNode, offset: Int64, length: Int64, into iov: IOVector, flags: RequestFlags
  ) async throws {
    let done = try await run(.read, offset: offset, length: length, iov: iov, flags: flags)
    // Short reads (past the end) are padded with zeroes.
    if done < iov.count { iov.fill(0, at: done) }
  }

  public func write(
    _ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector, flags: RequestFlags
  ) async throws {
    _ = try await run(.write, offset: offset, length: length, iov: iov, flags: flags)
  }

  public func flushToDisk(_ node: BlockNode) async throws {
    _ = try await run(.flush, offset: 0, length: 0)
  }

  public func discard(_ node: BlockNode, offset: Int64, length: Int64) async throws {
    _ = try await run(.discard, offset: offset, length: length)
  }

  /// librbd's write-zeroes; without MAY_UNMAP the range is allocated
  /// (thick-provisioned), as QEMU asks.
  public func writeZeroes(_ node: BlockNode, offset: Int64, length: Int64, flags: RequestFlags)
    async throws
  {
    let zeroFlags: Int32 =
      flags.contains(.mayUnmap) ? 0 : Int32(RBD_WRITE_ZEROES_FLAG_THICK_PROVISION)
    _ = try await run(
      .writeZeroes, offset: offset, length: length, flags: flags, zeroFlags: zeroFlags)
  }

  /// Resizes the image (QEMU's `qemu_rbd_co_truncate`): only
  /// `preallocation=off`.
  public func truncate(
    _ node: BlockNode, to length: Int64, exact: Bool, preallocation: PreallocationMode
  ) async throws {
    guard preallocation == .off else {
      throw BlockError.notSupported("Unsupported preallocation mode '\(preallocation.rawValue)'")
    }
    do {
      try await resize(to: length)
    } catch let error as BlockError {
      throw BlockError(error.code, "Failed to resize file: \(Errno.describe(error.code))")
    }
  }

  /// Grows the image to at least `end` before a write past the end (QEMU
  /// resizes synchronously, so its writes cannot interleave there). One
  /// growth runs at a time and every write re-checks the size after
  /// waiting for it, so a smaller growth started later never shrinks the
  /// image below a larger one.
  func grow(to end: Int64) async throws {
    while end > imageSize {
      if let growing = growth {
        _ = await growing.result
        continue
      }
      let task = Task { try await self.resize(to: end) }
      growth = task
      let result = await task.result
      growth = nil
      try result.get()
    }
  }

  /// `rbd_resize` on a thread of its own; updates ``imageSize``.
  func resize(to length: Int64) async throws {
    let connection = try openImage()
    let result = await RBDAsync.blocking { rbd_resize(connection.image, UInt64(length)) }
    if result < 0 { throw BlockError(Errno(rawValue: -result)) }
    imageSize = length
  }

  /// One librbd request (QEMU's `qemu_rbd_start_co`): writes and
  /// zero-writes past the end grow the image first. Returns librbd's
  /// result (bytes read for reads). A failure is reported as QEMU reports
  /// it (`rbd request failed: ...`) and thrown with librbd's errno.
  private func run(
    _ command: Command, offset: Int64, length: Int64, iov: IOVector? = nil,
    flags: RequestFlags = [], zeroFlags: Int32 = 0
  ) async throws -> Int {
    let connection = try openImage()
    if command == .write || command == .writeZeroes {
      try await grow(to: offset + length)
    }
    let image = connection.image
    let start = UInt64(offset)
    let count = UInt64(length)
    let result: Int
    if let iov {
      result = await iov.withUnsafeSegments { segments in
        let vectors = UnsafeMutablePointer<iovec>.allocate(capacity: max(segments.count, 1))
        defer { vectors.deallocate() }
        for (index, segment) in segments.enumerated() {
          vectors[index] = iovec(iov_base: segment.baseAddress, iov_len: segment.count)
        }
        let vectorCount = Int32(segments.count)
        return await RBDAsync.submit { completion in
          command == .read
            ? rbd_aio_readv(image, vectors, vectorCount, start, completion)
            : rbd_aio_writev(image, vectors, vectorCount, start, completion)
        }
      }
    } else {
      result = await RBDAsync.submit { completion in
        switch command {
        case .discard: rbd_aio_discard(image, start, count, completion)
        case .flush: rbd_aio_flush(image, completion)
        case .writeZeroes: rbd_aio_write_zeroes(image, start, Int(count), completion, zeroFlags, 0)
        case .read, .write: -EINVAL
        }
      }
    }
    if result < 0 {
      let code = Errno(rawValue: Int32(-result))
      report(
        "rbd request failed: cmd \(command.rawValue) offset \(offset) bytes \(length) flags "
          + "\(flags.rawValue) task.ret \(result) (\(Errno.describe(code)))")
      throw BlockError(code)
    }
    return result
  }
}
