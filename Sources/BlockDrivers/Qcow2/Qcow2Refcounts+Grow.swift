import BlockCore

extension Qcow2Refcounts {
  /// QEMU's `qcow2_refcount_metadata_size` fixed point: how many refcount
  /// blocks cover `clusters` clusters plus the refcount structures
  /// themselves, with QEMU's generous extra half table when `generous`.
  func refcountBlocksNeeded(clusters: Int64, generous: Bool) -> Int64 {
    let entriesPerTableCluster = clusterSize / 8
    let refcountsPerBlock = Int64(1) << blockBits
    var clusters = clusters
    var generous = generous
    var table: Int64 = 0
    var blocks: Int64 = 0
    var total: Int64 = 0
    var last: Int64
    repeat {
      last = total
      blocks = (clusters + table + blocks + refcountsPerBlock - 1) / refcountsPerBlock
      table = (blocks + entriesPerTableCluster - 1) / entriesPerTableCluster
      total = clusters + blocks + table
      if total == last && generous {
        clusters += (table + 1) / 2
        total = 0
        generous = false
      }
    } while total != last
    return blocks
  }

  /// Replaces a full refcount table (QEMU's `qcow2_refcount_area` as
  /// `alloc_refcount_block` calls it): new refcount blocks and a larger table
  /// are laid out from `areaStart`, describing themselves; the blocks are
  /// written and flushed, then the table, then the header is switched to it,
  /// and finally the old table's clusters are freed.
  func growTable(areaStart: Int64, newBlockIndex: Int, newBlock: Int64, file: BlockNode)
    async throws
  {
    _ = try await refcountArea(
      start: areaStart, additionalClusters: 0, exact: false,
      newBlock: (newBlockIndex, newBlock), file: file)
  }

  /// QEMU's `qcow2_refcount_area`: a new refcount table (exactly as large as
  /// needed when `exact`, else half as large again) and the refcount blocks
  /// missing to count everything up to `start` plus `additionalClusters`
  /// more, laid out from `start`, which must be free up to the end of the
  /// file; returns where that area ends.
  func refcountArea(
    start areaStart: Int64, additionalClusters: Int64, exact: Bool,
    newBlock: (index: Int, offset: Int64)?, file: BlockNode
  ) async throws -> Int64 {
    let refcountsPerBlock = Int64(1) << blockBits
    let totalBlocks = Int(
      refcountBlocksNeeded(
        clusters: (areaStart >> clusterBits) + additionalClusters, generous: !exact))
    let areaIndex = Int((areaStart >> clusterBits) / refcountsPerBlock)
    let entriesPerCluster = Int(clusterSize / 8)
    var tableSize = exact ? totalBlocks : totalBlocks + (totalBlocks + 1) / 2
    tableSize = (tableSize + entriesPerCluster - 1) / entriesPerCluster * entriesPerCluster
    if UInt64(tableSize) * 8 > Qcow2Header.maxRefcountTableBytes {
      throw BlockError(.fileTooLarge, "qcow2: the refcount table would be too large")
    }
    let tableClusters = tableSize * 8 / Int(clusterSize)
    let used = (table.lastIndex { $0 != 0 } ?? -1) + 1
    var newTable = [UInt64](repeating: 0, count: tableSize)
    let kept = min(used, tableSize)
    newTable.replaceSubrange(0..<kept, with: table[0..<kept])
    if let newBlock { newTable[newBlock.index] = UInt64(newBlock.offset) }

    let missing = (areaIndex..<totalBlocks).filter { newTable[$0] == 0 }.count
    let tableOffset = areaStart + Int64(missing) * clusterSize
    let areaEnd = tableOffset + Int64(tableClusters) * clusterSize
    var nextBlock = areaStart
    var written: [(Int64, Qcow2RefcountBlock)] = []
    for index in areaIndex..<totalBlocks {
      var block: Qcow2RefcountBlock
      let offset: Int64
      if newTable[index] != 0 {
        offset = Int64(newTable[index] & Qcow2Entry.offsetMask)
        block = try await cachedBlock(at: offset, file: file)
      } else {
        offset = nextBlock
        block = Qcow2RefcountBlock(clusterSize: Int(clusterSize), bits: refcountBits)
        newTable[index] = UInt64(offset)
        nextBlock += clusterSize
      }
      let firstCovered = Int64(index) * refcountsPerBlock * clusterSize
      if firstCovered < areaEnd {
        let start = firstCovered < areaStart ? (areaStart - firstCovered) / clusterSize : 0
        let end = min((areaEnd - firstCovered) / clusterSize, refcountsPerBlock)
        for entry in start..<max(start, end) { block[Int(entry)] = 1 }
      }
      written.append((offset, block))
    }
    try await file.emit(.refblockAllocWriteBlocks)
    for (offset, block) in written {
      blocks[offset] = block
      try await file.write(at: offset, bytes: block.bytes)
    }
    try await file.flush()

    var tableBytes = [UInt8](repeating: 0, count: tableSize * 8)
    for (index, entry) in newTable.enumerated() { tableBytes.setUInt64(entry, at: index * 8) }
    try await file.emit(.refblockAllocWriteTable)
    try await file.write(at: tableOffset, bytes: tableBytes)
    try await file.flush()
    var fields = [UInt8](repeating: 0, count: 12)
    fields.setUInt64(UInt64(tableOffset), at: 0)
    fields.setUInt32(UInt32(tableClusters), at: 8)
    try await file.emit(.refblockAllocSwitchTable)
    try await file.write(at: 48, bytes: fields)
    try await file.flush()

    let oldOffset = self.tableOffset
    let oldBytes = Int64(table.count) * 8
    table = newTable
    self.tableOffset = tableOffset
    _ = try await free(offset: oldOffset, bytes: oldBytes, file: file)
    return areaEnd
  }
}
