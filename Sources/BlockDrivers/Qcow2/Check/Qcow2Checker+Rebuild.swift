import BlockCore

/// Rebuilding the refcount structure from the counted references (QEMU's
/// `rebuild_refcount_structure`): new refcount blocks and a new refcount
/// table in free clusters, then the header points at the new table; the old
/// structures are left to the leak repair.
extension Qcow2Checker {
  /// Writes a new refcount structure for ``references`` and enters it in
  /// the header.
  func rebuildRefcountStructure() async throws {
    storedBlocks = [:]
    oldTable = storedTable
    var newTable: [UInt64] = []
    var grown = try await writeRefcountBlocks(
      from: 0, to: Int64(references.count), table: &newTable)
    var tableOffset: Int64 = -1
    var tableClusters: Int64 = 0
    var firstFree: Int64 = 0
    repeat {
      tableClusters = clusters(Int64(newTable.count) * 8)
      tableOffset = allocateCounted(tableClusters, firstFree: &firstFree)
      let start = tableOffset >> clusterBits
      grown = try await writeRefcountBlocks(
        from: start, to: start + tableClusters, table: &newTable)
    } while grown

    var bytes = [UInt8](repeating: 0, count: newTable.count * 8)
    for (index, entry) in newTable.enumerated() { bytes.setUInt64(entry, at: index * 8) }
    try await checkOverlap(offset: tableOffset, size: Int64(bytes.count), what: "reftable")
    do {
      try await file.write(at: tableOffset, bytes: bytes)
      var field = [UInt8](repeating: 0, count: 12)
      field.setUInt64(UInt64(tableOffset), at: 0)
      field.setUInt32(UInt32(tableClusters), at: 8)
      try await file.write(at: 48, bytes: field)
      try await file.flush()
    } catch let error as BlockError {
      report("ERROR writing reftable: \(error.codeDescription)")
      result.checkErrors += 1
      throw Abort(error: error)
    }
    header.refcountTableOffset = UInt64(tableOffset)
    header.refcountTableClusters = UInt32(tableClusters)
    storedTable = newTable
  }

  /// Writes a refcount block for every block-sized range of clusters from
  /// `first` to `end` with a counted reference, allocating the blocks that
  /// `table` lacks among the counted clusters (QEMU's
  /// `rebuild_refcounts_write_refblocks`); true when `table` had to grow.
  private func writeRefcountBlocks(from first: Int64, to end: Int64, table: inout [UInt64])
    async throws -> Bool
  {
    var end = end
    var firstFree: Int64 = 0
    var grown = false
    var cluster = first
    let entriesPerBlock = Int64(1) << blockBits
    while cluster < end {
      defer { cluster += 1 }
      if counted(cluster) == 0 {
        // Straight to the next counted cluster (or past the end).
        let found = references.firstReferenced(
          from: Int(cluster), to: Int(min(end, Int64(references.count))))
        cluster = found.map(Int64.init) ?? end
        if found == nil { continue }
      }
      let blockIndex = Int(cluster >> blockBits)
      let blockStart = Int64(blockIndex) << blockBits
      let blockOffset: Int64
      if blockIndex < table.count, table[blockIndex] != 0 {
        blockOffset = Int64(table[blockIndex])
      } else {
        firstFree = max(firstFree, blockStart)
        blockOffset = allocateCounted(1, firstFree: &firstFree)
        end = max(end, (blockOffset >> clusterBits) + 1)
        if table.count <= blockIndex {
          let bytes = (Int64(blockIndex + 1) * 8 + clusterSize - 1) & ~(clusterSize - 1)
          table += [UInt64](repeating: 0, count: Int(bytes / 8) - table.count)
          grown = true
        }
        table[blockIndex] = UInt64(blockOffset)
      }
      var block = Qcow2RefcountBlock(clusterSize: Int(clusterSize), bits: header.refcountBits)
      for entry in 0..<Int(entriesPerBlock) {
        let value = counted(blockStart + Int64(entry))
        if value != 0 { block[entry] = value }
      }
      try await checkOverlap(offset: blockOffset, size: clusterSize, what: "refblock")
      do {
        try await file.write(at: blockOffset, bytes: block.bytes)
      } catch let error as BlockError {
        report("ERROR writing refblock: \(error.codeDescription)")
        result.checkErrors += 1
        throw Abort(error: error)
      }
      cluster = blockStart + entriesPerBlock - 1
    }
    return grown
  }

  /// Finds `count` contiguous clusters without counted references from
  /// `firstFree` on, growing the counted range past the end when needed,
  /// counts one reference for each and returns the offset of the first
  /// (QEMU's `alloc_clusters_imrt`).
  private func allocateCounted(_ count: Int64, firstFree: inout Int64) -> Int64 {
    var cluster = firstFree
    var contiguous: Int64 = 0
    var firstGap = true
    while cluster < Int64(references.count) && contiguous < count {
      if references[Int(cluster)] == 0 {
        contiguous += 1
        if firstGap {
          firstFree = cluster
          firstGap = false
        }
      } else {
        contiguous = 0
      }
      cluster += 1
    }
    if contiguous < count { growReferences(to: cluster + count - contiguous) }
    cluster -= contiguous
    for index in cluster..<cluster + count { references[Int(index)] = 1 }
    return cluster << clusterBits
  }
}
