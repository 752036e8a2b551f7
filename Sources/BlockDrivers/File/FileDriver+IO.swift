import BlockCore
import SystemPackage

extension FileDriver {
  public func read(
    _ node: BlockNode, offset: Int64, length: Int64, into iov: IOVector, flags: RequestFlags
  ) async throws {
    let file = try openFile()
    let direct = direct
    let bounce = needsBounce(iov)
    let target = bounce ? IOVector(allocating: iov.count, alignment: bufferAlignment) : iov
    try await io {
      let count = try file.read(into: target, at: offset, direct: direct)
      // Past the end of the file reads as zeroes.
      if count < target.count { target.fill(0, at: count) }
    }
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
    try await io { [source] in try file.write(from: source, at: offset) }
  }

  /// fdatasync. After a failure without O_DIRECT the kernel may have marked
  /// unwritten pages clean, so this and every later flush fail (QEMU's
  /// `handle_aiocb_flush`).
  public func flushToDisk(_ node: BlockNode) async throws {
    if let pageCacheError { throw BlockError(pageCacheError, "Earlier flush failed") }
    let file = try openFile()
    do {
      try await io { try file.dataSync() }
    } catch let error as BlockError {
      if !direct { pageCacheError = error.code }
      throw error
    }
  }

  /// Whether O_DIRECT cannot take `iov` as it is: a segment's address or
  /// length is not aligned (QEMU's `bdrv_qiov_is_aligned`). Such requests go
  /// through an aligned bounce buffer.
  func needsBounce(_ iov: IOVector) -> Bool {
    guard direct else { return false }
    let memory = bufferAlignment
    let length = max(Int(requestAlignment), memory)
    return iov.segments.contains { segment in
      Int(bitPattern: segment.baseAddress) % memory != 0 || segment.count % length != 0
    }
  }
}
