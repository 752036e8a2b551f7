import BlockCore

extension Qcow2Driver {
  /// QEMU's `qcow2_co_pwrite_zeroes` for whole clusters of a v3 image: each
  /// cluster gets the zero flag, keeping its host cluster unless MAY_UNMAP
  /// (or compression) lets it go. A partial cluster is zeroed whole when the
  /// rest of it already reads as zeroes and it holds no data. A v2 image has
  /// no zero flag: without a backing file its clusters are discarded (they
  /// then read as zeroes). Anything else is ENOTSUP: the engine then writes
  /// zeroes.
  func zeroClusters(_ node: BlockNode, offset: Int64, length: Int64, flags: RequestFlags)
    async throws
  {
    var offset = offset
    var length = length
    let mask = header.clusterSize - 1
    let head = offset & mask
    let tail =
      offset + length == Int64(header.size) ? 0 : (mask + 1 - (offset + length) & mask) & mask
    if head != 0 || tail != 0 {
      guard head + length + tail <= header.clusterSize,
        try await readsAsZero(node, offset: offset - head, bytes: head),
        try await readsAsZero(node, offset: offset + length, bytes: tail)
      else { throw BlockError.notSupported() }
      offset -= head
      length = min(header.clusterSize, Int64(header.size) - offset)
      let type = try await lock.withLock {
        try await mapping(node, offset: offset, bytes: length).type
      }
      guard type == .unallocated || type == .zeroPlain || type == .zeroAllocated else {
        throw BlockError.notSupported()
      }
    }
    try checkClusterAligned(node, offset: offset, length: length)
    guard header.version >= 3 else {
      if node.backing != nil { throw BlockError.notSupported() }
      try await discardClusters(node, offset: offset, length: length)
      return
    }
    let unmapAllowed = flags.contains(.mayUnmap)
    try await rewriteEntries(node, offset: offset, length: length) { entry in
      let type = Qcow2Entry.type(of: entry)
      let unmap =
        type == .compressed
        || (unmapAllowed && (type == .normal || type == .zeroAllocated))
      return (unmap ? 0 : entry) | Qcow2Entry.zero
    }
  }

  /// QEMU's `qcow2_co_pdiscard` (not a full discard): discarded clusters read
  /// as zeroes on v3 images (unallocated on v2), and their host clusters are
  /// freed. Partial clusters are ignored (ENOTSUP).
  func discardRequest(_ node: BlockNode, offset: Int64, length: Int64) async throws {
    try checkClusterAligned(node, offset: offset, length: length)
    try await discardClusters(node, offset: offset, length: length)
  }

  /// QEMU's `qcow2_cluster_discard` with `full_discard` false.
  private func discardClusters(_ node: BlockNode, offset: Int64, length: Int64) async throws {
    let hasBacking = node.backing != nil
    let zero = header.version >= 3 ? Qcow2Entry.zero : 0
    try await rewriteEntries(node, offset: offset, length: length) { entry in
      let type = Qcow2Entry.type(of: entry)
      let allocated = type == .normal || type == .zeroAllocated || type == .compressed
      return hasBacking || allocated ? zero : entry
    }
  }

  /// Whether the guest range reads as zeroes through the whole backing chain
  /// (QEMU's `is_zero` in block/qcow2.c), clamped to the image's end.
  private func readsAsZero(_ node: BlockNode, offset: Int64, bytes: Int64) async throws -> Bool {
    var offset = offset
    var remaining = min(bytes, Int64(header.size) - offset)
    while remaining > 0 {
      let (status, _) = try await node.blockStatusAbove(
        base: nil, offset: offset, bytes: remaining, wantZero: true)
      guard status.flags.contains(.zero), status.count > 0 else { return false }
      offset += status.count
      remaining -= status.count
    }
    return true
  }

  /// Whole clusters, or the partial last cluster of an image whose size is
  /// not cluster-aligned.
  private func checkClusterAligned(_ node: BlockNode, offset: Int64, length: Int64) throws {
    let mask = header.clusterSize - 1
    if offset & mask != 0 { throw BlockError.notSupported() }
    if length & mask != 0 && offset + length != Int64(header.size) {
      throw BlockError.notSupported()
    }
  }

  /// Replaces the L2 entries of the clusters in the range with `transform`'s
  /// answer, L2 table by L2 table (QEMU's `zero_in_l2_slice` and
  /// `discard_in_l2_slice`): the entries first, then the refcounts of the
  /// clusters they no longer use.
  func rewriteEntries(
    _ node: BlockNode, offset: Int64, length: Int64, discard: Qcow2DiscardType = .request,
    _ transform: (UInt64) -> UInt64
  ) async throws {
    try await lock.withLock {
      let clusterBits = Int64(header.clusterBits)
      var cluster = offset >> clusterBits
      let end = (offset + length + header.clusterSize - 1) >> clusterBits
      while cluster < end {
        let l2Offset = try await l2TableForWrite(node, offset: cluster << clusterBits)
        let table = try await l2Table(node, at: l2Offset)
        let first = Int(cluster & (header.l2Entries - 1))
        let count = Int(min(end - cluster, header.l2Entries - Int64(first)))
        let old = Array(table[first..<first + count])
        let new = old.map(transform)
        if old != new {
          try await writeL2Entries(node, l2Offset: l2Offset, first: first, new)
          let dropped = zip(old, new).compactMap { old, new in
            Qcow2Entry.type(of: old).hasHostCluster && new & Qcow2Entry.offsetMask == 0 ? old : nil
          }
          try await releaseClusters(node, oldEntries: dropped, discard: discard)
        }
        cluster += Int64(count)
      }
    }
  }
}
