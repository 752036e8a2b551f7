import BlockCore

extension Qcow2Driver {
  /// QEMU's `qcow2_co_pwrite_zeroes` for whole clusters of a v3 image: each
  /// cluster gets the zero flag, keeping its host cluster unless MAY_UNMAP
  /// (or compression) lets it go. A v2 image has no zero flag: without a
  /// backing file its clusters are discarded (they then read as zeroes),
  /// with one the request is ENOTSUP, as for partial clusters: the engine
  /// then writes zeroes.
  public func writeZeroes(_ node: BlockNode, offset: Int64, length: Int64, flags: RequestFlags)
    async throws
  {
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
  public func discard(_ node: BlockNode, offset: Int64, length: Int64) async throws {
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
  private func rewriteEntries(
    _ node: BlockNode, offset: Int64, length: Int64, _ transform: (UInt64) -> UInt64
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
          try await releaseClusters(node, oldEntries: dropped)
        }
        cluster += Int64(count)
      }
    }
  }
}
