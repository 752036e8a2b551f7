import BlockCore
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

extension FileDriver {
  public func read(
    _ node: BlockNode, offset: Int64, length: Int64, into iov: IOVector, flags: RequestFlags
  ) async throws {
    let file = try openFile()
    let direct = direct
    let bounce = needsBounce(iov)
    let target = bounce ? IOVector(allocating: iov.count, alignment: bufferAlignment) : iov
    let count: Int
    if let ring = usableRing {
      count = try await ringRead(ring, file, into: target, at: offset)
    } else {
      count = try await io { try file.read(into: target, at: offset, direct: direct) }
    }
    // Past the end of the file reads as zeroes.
    if count < target.count { target.fill(0, at: count) }
    if bounce { iov.copy(from: target, count: iov.count) }
  }

  public func write(
    _ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector, flags: RequestFlags
  ) async throws {
    let file = try openFile()
    var source = iov
    if needsBounce(iov) {
      source = IOVector(allocating: iov.count, alignment: bufferAlignment)
      source.copy(from: iov, count: iov.count)
    }
    if let ring = usableRing {
      try await ringWrite(ring, file, from: source, at: offset)
    } else {
      try await io { [source] in try file.write(from: source, at: offset) }
    }
  }

  /// fdatasync. After a failure without O_DIRECT the kernel may have marked
  /// unwritten pages clean, so this and every later flush fail (QEMU's
  /// `handle_aiocb_flush`).
  public func flushToDisk(_ node: BlockNode) async throws {
    if let pageCacheError { throw BlockError(pageCacheError, "Earlier flush failed") }
    let file = try openFile()
    do {
      if let ring = usableRing {
        try await ringDataSync(ring, file)
      } else {
        try await io { try file.dataSync() }
      }
    } catch let error as BlockError {
      if !direct { pageCacheError = error.code }
      throw error
    }
  }

  /// The ring to submit to, unless the node uses the thread pool.
  private var usableRing: FileRing? { ringRefusesRequests ? nil : ring }

  /// Reads into `iov` at `offset` through the ring until it is full or the
  /// file ends, as ``PosixFile/read(into:at:direct:)``: short reads continue
  /// with the rest and EINTR is resubmitted. EAGAIN and ECANCELED are
  /// resubmitted once; a second one in a row finishes the request on the
  /// thread pool (the loop's thread never exits, so the kernel has no reason
  /// to cancel its work; this is a safety net, not a path).
  private func ringRead(_ ring: FileRing, _ file: PosixFile, into iov: IOVector, at offset: Int64)
    async throws -> Int
  {
    var done = 0
    var retried = false
    while done < iov.count {
      let rest = iov.slice(done, iov.count - done)
      switch injected(await ring.read(file.fd, into: rest, at: offset + Int64(done))) {
      case .done(let count) where count > 0:
        done += count
        retried = false
      case .done:
        return done
      case .failed(EINTR):
        continue
      case .failed(EINVAL) where direct && done > 0:
        // O_DIRECT at an unaligned end of file.
        return done
      case .failed(ECANCELED), .failed(EAGAIN):
        if !retried {
          retried = true
          continue
        }
        let direct = direct
        let start = offset + Int64(done)
        return try await done + io { try file.read(into: rest, at: start, direct: direct) }
      case .failed(let code):
        throw BlockError(Errno(rawValue: code))
      }
    }
    return done
  }

  /// Writes all of `iov` at `offset` through the ring, continuing after
  /// short writes; EINTR, EAGAIN and ECANCELED as ``ringRead``.
  private func ringWrite(_ ring: FileRing, _ file: PosixFile, from iov: IOVector, at offset: Int64)
    async throws
  {
    var done = 0
    var retried = false
    while done < iov.count {
      let rest = iov.slice(done, iov.count - done)
      switch injected(await ring.write(file.fd, from: rest, at: offset + Int64(done))) {
      case .done(let count) where count > 0:
        done += count
        retried = false
      case .done:
        // No progress and no error: the file system cannot take more.
        throw BlockError(Errno.noSpace)
      case .failed(EINTR):
        continue
      case .failed(ECANCELED), .failed(EAGAIN):
        if !retried {
          retried = true
          continue
        }
        let start = offset + Int64(done)
        try await io { try file.write(from: rest, at: start) }
        return
      case .failed(let code):
        throw BlockError(Errno(rawValue: code))
      }
    }
  }

  /// fdatasync through the ring; EINTR, EAGAIN and ECANCELED as ``ringRead``.
  private func ringDataSync(_ ring: FileRing, _ file: PosixFile) async throws {
    var retried = false
    while true {
      switch injected(await ring.dataSync(file.fd)) {
      case .done:
        return
      case .failed(EINTR):
        continue
      case .failed(ECANCELED), .failed(EAGAIN):
        if !retried {
          retried = true
          continue
        }
        try await io { try file.dataSync() }
        return
      case .failed(let code):
        throw BlockError(Errno(rawValue: code))
      }
    }
  }

  /// `outcome`, or the next of ``injectedRingResults`` (a test seam).
  private func injected(_ outcome: FileRing.Outcome) -> FileRing.Outcome {
    guard !injectedRingResults.isEmpty else { return outcome }
    return FileRing.outcome(injectedRingResults.removeFirst())
  }

  /// Whether O_DIRECT cannot take `iov` as it is: a segment's address or
  /// length is not aligned (QEMU's `bdrv_qiov_is_aligned`). Such requests go
  /// through an aligned bounce buffer.
  func needsBounce(_ iov: IOVector) -> Bool {
    guard direct else { return false }
    let memory = bufferAlignment
    let length = max(Int(requestAlignment), memory)
    return iov.withUnsafeSegments { segments in
      segments.contains { segment in
        Int(bitPattern: segment.baseAddress) % memory != 0 || segment.count % length != 0
      }
    }
  }
}
