import BlockCore

extension Qcow2Driver {
  /// QEMU's `handle_alloc_space`: when the parts of the `span` bytes from
  /// guest `guestStart` (host `host`) that a write does not cover (`cowHead`
  /// bytes before it, `cowTail` after it) read as zeroes, the span is zeroed
  /// on the data file with NO_FALLBACK (the `cluster_alloc_space` event)
  /// instead of writing zero buffers; returns whether that happened, false
  /// when the file cannot zero cheaply (the caller then copies as usual).
  /// Call with the lock held.
  func zeroInsteadOfCOW(
    _ node: BlockNode, guestStart: Int64, host: Int64, span: Int64, cowHead: Int64,
    cowTail: Int64
  ) async throws -> Bool {
    let file = try fileNode(node)
    let target = try dataNode(node)
    guard target.capabilities.supportedZeroFlags.contains(.noFallback) else { return false }
    guard try await readsAsZeroLocked(node, offset: guestStart, bytes: cowHead),
      try await readsAsZeroLocked(node, offset: guestStart + span - cowTail, bytes: cowTail)
    else { return false }
    try await file.emit(.clusterAllocSpace)
    do {
      try await target.writeZeroes(at: host, count: span, flags: .noFallback)
    } catch let error as BlockError where error.code == BlockError.notSupportedCode {
      return false
    }
    return true
  }

  /// Whether guest bytes read as zeroes, judged from the mapping (the lock is
  /// held) and, for unallocated clusters, the backing chain's block status;
  /// clamped to the disk's end as QEMU's `is_zero`.
  private func readsAsZeroLocked(_ node: BlockNode, offset: Int64, bytes: Int64) async throws
    -> Bool
  {
    var offset = offset
    var remaining = min(bytes, Int64(header.size) - offset)
    while remaining > 0 {
      let run = try await mapping(node, offset: offset, bytes: remaining)
      switch run.type {
      case .zeroPlain, .zeroAllocated:
        break
      case .normal, .compressed:
        return false
      case .unallocated, .unallocatedAllocated:
        if let backing = node.backing {
          var position = offset
          while position < min(offset + run.count, backing.length) {
            let (status, _) = try await backing.blockStatusAbove(
              base: nil, offset: position,
              bytes: min(offset + run.count, backing.length) - position,
              wantZero: false)
            guard status.flags.contains(.zero), status.count > 0 else { return false }
            position += status.count
          }
        }
      }
      offset += run.count
      remaining -= run.count
    }
    return true
  }
}
