import BlockCore

extension Qcow2Driver {
  /// Shrinks the disk to `length` bytes (QEMU's `qcow2_co_truncate` when the
  /// size goes down): the clusters past the new end are fully discarded
  /// (their L2 entries cleared, their host clusters freed and punched in the
  /// file), the L1 entries past the new end cleared and their L2 tables
  /// freed (the table keeps its length, as in QEMU), refcount blocks that no
  /// longer count anything dropped, the file cut after its last used
  /// cluster, and the new size written to the header.
  func shrink(_ node: BlockNode, to length: Int64) async throws {
    let file = try fileNode(node)
    try await lock.withLock { try await writeBackMetadata(node) }
    let clusterSize = header.clusterSize
    let oldSize = Int64(header.size)
    let discardStart = (length + clusterSize - 1) & ~(clusterSize - 1)
    if discardStart < oldSize {
      try await step("Failed to discard cropped clusters") {
        try await lock.withLock {
          try await rewriteEntries(
            node, offset: discardStart, length: oldSize - discardStart, discard: .always
          ) { _ in (0, 0) }
        }
      }
    }
    try await lock.withLock {
      try await step("Failed to reduce the number of L2 tables") {
        try await shrinkL1Table(node, to: Int(header.requiredL1Entries(for: UInt64(length))))
      }
      try await step("Failed to discard unused refblocks") {
        try await dropUnusedRefcountBlocks(file)
      }
      // QEMU only warns when the file cannot be cut: the image is valid.
      try? await cutFileTail(file)
      try await file.writeQcow2HeaderField(.size, UInt64(length))
      try await file.flush()
      header.size = UInt64(length)
    }
  }

  /// Runs one step of a shrink, its errors prefixed as QEMU's
  /// `error_setg_errno` prefixes them.
  private func step(_ what: String, _ body: @BlockActor () async throws -> Void) async throws {
    do {
      try await body()
    } catch let error as BlockError {
      throw BlockError(error.code, "\(what): \(error)")
    }
  }

  /// QEMU's `qcow2_shrink_l1_table`: the entries from `entries` on are zeroed
  /// in the file (flushed), then the L2 tables they pointed at are freed.
  private func shrinkL1Table(_ node: BlockNode, to entries: Int) async throws {
    guard entries < l1Table.count else { return }
    let file = try fileNode(node)
    let zeroes = [UInt8](repeating: 0, count: (l1Table.count - entries) * 8)
    try await checkOverlapBeforeWrite(
      node, offset: Int64(header.l1TableOffset) + Int64(entries) * 8, size: Int64(zeroes.count),
      ignoring: .activeL1)
    try await file.write(at: Int64(header.l1TableOffset) + Int64(entries) * 8, bytes: zeroes)
    try await file.flush()
    let dropped = l1Table[entries...].reversed().map { $0 & Qcow2Entry.offsetMask }
    for index in entries..<l1Table.count { l1Table[index] = 0 }
    let refcounts = try refcountsForWrite()
    for l2Offset in dropped where l2Offset != 0 {
      let freed = try await refcounts.free(
        offset: Int64(l2Offset), bytes: header.clusterSize, file: file)
      for offset in freed { l2Cache.remove(at: offset) }
      try await passDiscard(file, freed: freed, type: .always)
    }
  }

  /// QEMU's `qcow2_shrink_reftable`: refcount blocks whose counts are all
  /// zero (a block's count of itself aside) leave the refcount table, which
  /// is rewritten and flushed, then their clusters are freed.
  private func dropUnusedRefcountBlocks(_ file: BlockNode) async throws {
    let refcounts = try refcountsForWrite()
    var newTable = refcounts.table
    for (index, entry) in refcounts.table.enumerated() {
      let blockOffset = Int64(entry & Qcow2Entry.offsetMask)
      guard blockOffset != 0 else {
        newTable[index] = 0
        continue
      }
      var block = try await refcounts.cachedBlock(at: blockOffset, file: file)
      let ownCluster = blockOffset >> refcounts.clusterBits
      if ownCluster >> refcounts.blockBits == Int64(index) {
        block[Int(ownCluster & ((1 << refcounts.blockBits) - 1))] = 0
      }
      if block.bytes.allSatisfy({ $0 == 0 }) { newTable[index] = 0 }
    }
    guard newTable != refcounts.table else { return }
    var bytes = [UInt8](repeating: 0, count: newTable.count * 8)
    for (index, entry) in newTable.enumerated() { bytes.setUInt64(entry, at: index * 8) }
    try await file.write(at: refcounts.tableOffset, bytes: bytes)
    try await file.flush()
    let old = refcounts.table
    for index in old.indices where old[index] != 0 && newTable[index] == 0 {
      let blockOffset = Int64(old[index] & Qcow2Entry.offsetMask)
      refcounts.table[index] = 0
      refcounts.blocks[blockOffset] = nil
      // A block counted in another block is freed there; one that counted
      // itself went away with its table entry.
      if try await refcounts.refcount(of: blockOffset >> refcounts.clusterBits, file: file) > 0 {
        _ = try await refcounts.free(offset: blockOffset, bytes: header.clusterSize, file: file)
      }
    }
  }

  /// Cuts the file after the last cluster with a reference (QEMU's
  /// `qcow2_get_last_cluster` and the tail truncation of a shrink).
  private func cutFileTail(_ file: BlockNode) async throws {
    let refcounts = try refcountsForWrite()
    let clusterSize = header.clusterSize
    let fileLength = file.length
    var cluster = (fileLength + clusterSize - 1) / clusterSize - 1
    while cluster >= 0, try await refcounts.refcount(of: cluster, file: file) == 0 {
      cluster -= 1
    }
    let end = (cluster + 1) * clusterSize
    if cluster >= 0 && end < fileLength {
      try await file.truncate(to: end, exact: false)
    }
  }
}
