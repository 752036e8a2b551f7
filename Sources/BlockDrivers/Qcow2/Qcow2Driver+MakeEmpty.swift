import BlockCore

extension Qcow2Driver {
  /// QEMU's `qcow2_make_empty` (what `qemu-img commit` does to the committed
  /// image): every guest cluster becomes unallocated, so the image reads
  /// entirely from its backing file (or as zeroes without one). A v3 image
  /// without snapshots, bitmaps or data file whose L1 table fits with the
  /// header, refcount table and one refcount block in one refcount block is
  /// rebuilt from scratch (see ``makeCompletelyEmpty(_:)``); any other
  /// discards every cluster (QEMU's full discard, passed to the file as a
  /// snapshot discard).
  public func makeEmpty(_ node: BlockNode) async throws {
    let l1Clusters = (Int64(header.l1Size) * 8 + header.clusterSize - 1) / header.clusterSize
    let refcountBlockEntries = header.clusterSize * 8 / Int64(header.refcountBits)
    if header.version >= 3 && header.snapshotCount == 0
      && !header.extensions.contains(where: { $0.type == Qcow2HeaderExtension.bitmaps })
      && 3 + l1Clusters <= refcountBlockEntries && !hasDataFile
    {
      try await lock.withLock { try await makeCompletelyEmpty(node, l1Clusters: l1Clusters) }
      return
    }
    let tableSpan = Int64(header.clusterBits) * 2 - 3
    try await lock.withLock {
      for index in l1Table.indices where l1Table[index] & Qcow2Entry.offsetMask != 0 {
        let current = try await l2Table(
          node, at: Int64(l1Table[index] & Qcow2Entry.offsetMask))
        guard current.words.contains(where: { $0 != 0 }) else { continue }
        // A table shared with a snapshot is copied first.
        let l2Offset = try await l2TableForWrite(node, offset: Int64(index) << tableSpan)
        let old = try await l2Table(node, at: l2Offset).words
        try await writeL2Entries(
          node, l2Offset: l2Offset, first: 0, [UInt64](repeating: 0, count: old.count))
        try await releaseClusters(
          node, oldEntries: old.filter { Qcow2Entry.type(of: $0).hasHostCluster },
          discard: .snapshot)
      }
    }
    try await fileNode(node).flush()
  }

  /// QEMU's `make_completely_empty`: with the dirty bit set (the refcounts
  /// are about to be wrong), the L1 table and the clusters after the header
  /// are zeroed, the header points at a one-cluster refcount table at
  /// cluster 1 and an empty L1 table at cluster 3, the refcount block at
  /// cluster 2 is entered in the table, the header, table, block and L1
  /// table are counted, the dirty bit cleared and the file cut after the L1
  /// table. Call with the lock held.
  private func makeCompletelyEmpty(_ node: BlockNode, l1Clusters: Int64) async throws {
    let file = try fileNode(node)
    let refcounts = try refcountsForWrite()
    let clusterSize = header.clusterSize
    l2Cache = Qcow2L2Cache(capacity: l2Cache.capacity)
    try await writeBackMetadata(node)
    refcounts.blocks = [:]
    try await markDirty(file)
    try await file.emit(.l1Update)
    try await file.writeZeroes(at: Int64(header.l1TableOffset), count: l1Clusters * clusterSize)
    l1Table = [UInt64](repeating: 0, count: l1Table.count)
    try await file.emit(.emptyImagePrepare)
    try await file.writeZeroes(at: clusterSize, count: (2 + l1Clusters) * clusterSize)
    try await file.emit(.l1Update)
    try await file.emit(.reftableUpdate)
    var fields = [UInt8](repeating: 0, count: 20)
    fields.setUInt64(UInt64(3 * clusterSize), at: 0)
    fields.setUInt64(UInt64(clusterSize), at: 8)
    fields.setUInt32(1, at: 16)
    try await file.write(at: 40, bytes: fields)
    try await file.flush()
    header.l1TableOffset = UInt64(3 * clusterSize)
    header.refcountTableOffset = UInt64(clusterSize)
    header.refcountTableClusters = 1
    refcounts.tableOffset = clusterSize
    refcounts.table = [UInt64](repeating: 0, count: Int(clusterSize / 8))
    refcounts.unwrittenBlocks = []
    try await file.emit(.refblockAlloc)
    var entry = [UInt8](repeating: 0, count: 8)
    entry.setUInt64(UInt64(2 * clusterSize), at: 0)
    try await file.write(at: clusterSize, bytes: entry)
    try await file.flush()
    refcounts.table[0] = UInt64(2 * clusterSize)
    refcounts.resetAllocationHints()
    // The structures just laid out take the clusters from 0 on (QEMU
    // allocates them with its allocator, which the empty refcounts lead
    // there).
    try await file.emit(.clusterAlloc)
    let counted = try await refcounts.allocate(at: 0, clusters: 3 + l1Clusters, file: file)
    if counted != 3 + l1Clusters {
      throw BlockError(.ioError, "First cluster in emptied image is in use")
    }
    try await file.flush()
    header.incompatibleFeatures &= ~Qcow2Feature.dirty
    try await file.writeQcow2HeaderField(.incompatibleFeatures, header.incompatibleFeatures)
    try await file.flush()
    try await file.truncate(to: (3 + l1Clusters) * clusterSize, exact: false)
  }
}
