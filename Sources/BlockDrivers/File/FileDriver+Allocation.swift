import BlockCore

extension FileDriver {
  /// Zero-writes through the fallocate ladder (see
  /// ``PosixFile/writeZeroes(offset:length:mayUnmap:support:)``); ENOTSUP
  /// when no rung works, so the engine writes zeroes. Modes found unsupported
  /// are not tried again.
  public func writeZeroes(_ node: BlockNode, offset: Int64, length: Int64, flags: RequestFlags)
    async throws
  {
    let file = try openFile()
    forgetDataExtent(offset: offset, length: length)
    let support = fallocateSupport
    let mayUnmap = flags.contains(.mayUnmap)
    let result = try await io {
      try file.writeZeroes(offset: offset, length: length, mayUnmap: mayUnmap, support: support)
    }
    fallocateSupport.subtract(result.unsupported)
    if !result.zeroed { throw BlockError.notSupported() }
  }

  /// Punches a hole; ENOTSUP (remembered) when the file system cannot.
  public func discard(_ node: BlockNode, offset: Int64, length: Int64) async throws {
    guard fallocateSupport.contains(.punchHole) else { throw BlockError.notSupported() }
    let file = try openFile()
    forgetDataExtent(offset: offset, length: length)
    do {
      try await io { try file.punchHole(offset: offset, length: length) }
    } catch let error as BlockError where error.code == BlockError.notSupportedCode {
      fallocateSupport.remove(.punchHole)
      throw error
    }
  }

  /// Data and holes from lseek(SEEK_DATA/SEEK_HOLE), as QEMU's
  /// `raw_co_block_status`: data is DATA, holes and the range past the last
  /// data are ZERO, both with OFFSET_VALID at the same offset in this node.
  /// Without `wantZero`, or when the file system cannot tell, everything is
  /// data.
  public func blockStatus(_ node: BlockNode, wantZero: Bool, offset: Int64, length: Int64)
    async throws -> BlockStatus
  {
    var flags: BlockStatusFlags = .data
    var count = length
    if wantZero, let known = knownDataExtent, known.contains(offset) {
      count = known.upperBound - offset
    } else if wantZero {
      let file = try openFile()
      let align = requestAlignment
      let generation = dataExtentGeneration
      switch await (try? io { file.extent(at: offset) }) ?? .unknown {
      case .data(let end):
        // Up to the hole, or to the end of file rounded up to the alignment.
        count = (end - offset + align - 1) / align * align
        if generation == dataExtentGeneration { knownDataExtent = offset..<(offset + count) }
      case .hole(let end):
        count = (end - offset) / align * align
        flags = .zero
        if count == 0 {
          // The next data starts inside this aligned block: report it as data.
          count = align
          flags = .data
        }
      case .trailingHole:
        flags = .zero
      case .unknown:
        break
      }
    }
    return BlockStatus(
      flags: flags.union(.offsetValid), count: min(count, length),
      mapOffset: offset, file: node)
  }

  /// Drops the cached data extent if it meets `length` bytes at `offset`
  /// (before a discard or zero-write may turn them into a hole).
  private func forgetDataExtent(offset: Int64, length: Int64) {
    dataExtentGeneration &+= 1
    if let known = knownDataExtent, known.overlaps(offset..<(offset + length)) {
      knownDataExtent = nil
    }
  }

  /// Resizes the file to exactly `length` (QEMU's `raw_co_truncate` for
  /// regular files), preallocating as asked.
  public func truncate(
    _ node: BlockNode, to length: Int64, exact: Bool, preallocation: PreallocationMode
  ) async throws {
    let file = try openFile()
    knownDataExtent = nil
    dataExtentGeneration &+= 1
    let alignment = bufferAlignment
    try await io {
      try file.truncate(to: length, preallocation: preallocation, bufferAlignment: alignment)
    }
  }
}
