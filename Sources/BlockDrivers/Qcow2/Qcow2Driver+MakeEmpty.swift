import BlockCore

extension Qcow2Driver {
  /// QEMU's `bdrv_make_empty` for qcow2 (what `qemu-img commit` does to the
  /// committed image): every guest cluster becomes unallocated, so the image
  /// reads entirely from its backing file (or as zeroes without one), and the
  /// host clusters the entries held are freed. The L2 tables stay allocated
  /// (emptied), where QEMU may instead rebuild the whole metadata; both leave
  /// a consistent image with the same contents.
  public func makeEmpty(_ node: BlockNode) async throws {
    let tableSpan = Int64(header.clusterBits) * 2 - 3
    try await lock.withLock {
      for index in l1Table.indices where l1Table[index] & Qcow2Entry.offsetMask != 0 {
        let current = try await l2Table(
          node, at: Int64(l1Table[index] & Qcow2Entry.offsetMask))
        guard current.contains(where: { $0 != 0 }) else { continue }
        // A table shared with a snapshot is copied first.
        let l2Offset = try await l2TableForWrite(node, offset: Int64(index) << tableSpan)
        let old = try await l2Table(node, at: l2Offset)
        try await writeL2Entries(
          node, l2Offset: l2Offset, first: 0, [UInt64](repeating: 0, count: old.count))
        try await releaseClusters(
          node, oldEntries: old.filter { Qcow2Entry.type(of: $0).hasHostCluster })
      }
    }
    try await fileNode(node).flush()
  }
}
