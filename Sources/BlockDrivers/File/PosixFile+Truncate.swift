import BlockCore
import SystemPackage

extension PosixFile {
  /// Resizes a regular file to exactly `length` bytes, filling grown space as
  /// `preallocation` asks (QEMU's `handle_aiocb_truncate`): `off` leaves a
  /// hole, `falloc` reserves blocks with posix_fallocate, `full` writes zeroes
  /// and syncs. On failure the old length is restored.
  func truncate(to length: Int64, preallocation: PreallocationMode, bufferAlignment: Int)
    throws(BlockError)
  {
    let current: Int64
    do {
      current = try status().size
    } catch {
      throw Self.blockError(error, "Could not stat file")
    }
    if current > length && preallocation != .off {
      throw BlockError.notSupported("Cannot use preallocation for shrinking files")
    }
    switch preallocation {
    case .off:
      do {
        try setLength(length)
      } catch {
        throw Self.blockError(error, "Could not resize file")
      }
      if current == 0 && length > 0 { allocateFirstBlock(fileLength: length, bufferAlignment) }
    case .falloc:
      guard length != current else { return }
      do {
        try posixFallocate(offset: current, length: length - current)
      } catch {
        try? setLength(current)
        throw Self.blockError(error, "Could not preallocate new data")
      }
      if current == 0 { allocateFirstBlock(fileLength: length, bufferAlignment) }
    case .full:
      do {
        try setLength(length)
      } catch {
        throw Self.blockError(error, "Could not resize file")
      }
      do {
        try writeZeroes(from: current, to: length, bufferAlignment: bufferAlignment)
      } catch {
        try? setLength(current)
        throw Self.blockError(error, "Could not write zeros for preallocation")
      }
      do {
        try sync()
      } catch {
        try? setLength(current)
        throw Self.blockError(error, "Could not flush file to disk")
      }
    case .metadata:
      throw BlockError.notSupported("Unsupported preallocation mode: metadata")
    }
  }

  /// Writes zeroes over `start ..< end` in 64 KiB pieces.
  private func writeZeroes(from start: Int64, to end: Int64, bufferAlignment: Int) throws {
    let chunk = 65536
    let buffer = IOVector(allocating: chunk, alignment: max(bufferAlignment, 4096), zeroed: true)
    var position = start
    while position < end {
      let count = Int(min(Int64(chunk), end - position))
      try write(from: buffer.slice(0, count), at: position)
      position += Int64(count)
    }
  }

  /// Writes zeroes over the first block of a file that was empty, so that
  /// O_DIRECT alignment probing reads allocated data next time (QEMU's
  /// `allocate_first_block`). An optimisation: failures are ignored, and
  /// files shorter than a sector are left alone rather than grown.
  private func allocateFirstBlock(fileLength: Int64, _ bufferAlignment: Int) {
    guard fileLength >= 512 else { return }
    let size = fileLength < 4096 ? 512 : 4096
    let buffer = IOVector(allocating: size, alignment: max(bufferAlignment, 4096), zeroed: true)
    try? write(from: buffer, at: 0)
  }

  /// A block error for a failed system call: `message: strerror` with the
  /// errno as code (QEMU's `error_setg_errno`).
  static func blockError(_ error: any Error, _ message: String) -> BlockError {
    if let error = error as? BlockError { return error }
    let code = (error as? Errno) ?? .ioError
    return BlockError(code, "\(message): \(Errno.describe(code))")
  }
}
