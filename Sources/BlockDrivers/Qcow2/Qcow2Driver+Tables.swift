import BlockCore

extension Qcow2Driver {
  /// The L2 table for guest `offset`, allocated when the L1 entry is empty or
  /// shared with a snapshot (QEMU's `get_cluster_table` and `l2_allocate`):
  /// the table's cluster is counted and flushed, the zeroed or copied table
  /// written and flushed, and only then the L1 entry written (and flushed),
  /// then a shared old table loses this layer's reference; a crash leaks at
  /// worst a cluster. Call with the metadata lock held.
  func l2TableForWrite(_ node: BlockNode, offset: Int64) async throws -> Int64 {
    let file = try fileNode(node)
    let l1Index = Int(offset >> (Int64(header.clusterBits) + header.l2Bits))
    if l1Index >= l1Table.count { try await growL1Table(node, toAtLeast: l1Index + 1) }
    let entry = l1Table[l1Index]
    let existing = Int64(entry & Qcow2Entry.offsetMask)
    if existing & (header.clusterSize - 1) != 0 {
      throw corruption(
        "L2 table offset \(Self.alternateHex(existing)) unaligned (L1 index: \(Self.alternateHex(l1Index)))"
      )
    }
    if existing != 0 && entry & Qcow2Entry.copied != 0 { return existing }
    // A new table: zeroed, or a copy of a table shared with a snapshot.
    let refcounts = try refcountsForWrite()
    let l2Offset = try await refcounts.allocate(clusters: 1, file: file, structure: "L2 table")
    // QEMU flushes its refcount cache here.
    try await refcounts.writeDeferred(file: file)
    try await file.flush()
    if existing != 0 { try await file.emit(.l2AllocCowRead) }
    let table =
      existing != 0
      ? try await l2Table(node, at: existing)
      : Qcow2L2Table(zeroedWords: Int(header.clusterSize / 8))
    var bytes = [UInt8](repeating: 0, count: Int(header.clusterSize))
    for (index, entry) in table.words.enumerated() where entry != 0 {
      bytes.setUInt64(entry, at: index * 8)
    }
    try await checkOverlapBeforeWrite(
      node, offset: l2Offset, size: header.clusterSize, ignoring: .activeL2)
    try await file.emit(.l2AllocWrite)
    try await recordingL2Failure(at: l2Offset) {
      try await file.emit(.l2Update)
      try await file.write(at: l2Offset, bytes: bytes)
    }
    try await file.flush()
    l2Cache.insert(existing != 0 ? Qcow2L2Table(words: table.words) : table, at: l2Offset)
    let newEntry = UInt64(l2Offset) | Qcow2Entry.copied
    var entryBytes = [UInt8](repeating: 0, count: 8)
    entryBytes.setUInt64(newEntry, at: 0)
    try await checkOverlapBeforeWrite(
      node, offset: Int64(header.l1TableOffset) + Int64(l1Index) * 8, size: 8,
      ignoring: .activeL1)
    try await file.emit(.l1Update)
    try await file.write(at: Int64(header.l1TableOffset) + Int64(l1Index) * 8, bytes: entryBytes)
    try await file.flush()
    l1Table[l1Index] = newEntry
    if existing != 0 {
      // The snapshot keeps the old table; this layer drops its reference.
      for freed in try await refcounts.free(offset: existing, bytes: header.clusterSize, file: file)
      {
        l2Cache.remove(at: freed)
      }
    }
    return l2Offset
  }

  /// Replaces entries `first ..< first + entries.count` of the L2 table at
  /// `l2Offset`, in the cache and in the file; with extended L2 entries also
  /// their subcluster bitmaps (kept as they are when `bitmaps` is nil). The
  /// cached table changes in place; when the write fails its old words come
  /// back, so that the cache never shows what the file does not have. Call
  /// with the lock held.
  func writeL2Entries(
    _ node: BlockNode, l2Offset: Int64, first: Int, _ entries: [UInt64],
    bitmaps: [UInt64]? = nil
  ) async throws {
    let table = try await l2Table(node, at: l2Offset)
    let words = header.l2EntryWords
    let range = first * words..<(first + entries.count) * words
    try await checkOverlapBeforeWrite(
      node, offset: l2Offset + Int64(range.lowerBound) * 8, size: Int64(range.count) * 8,
      ignoring: .activeL2)
    let previous = Array(table.words[range])
    for (index, entry) in entries.enumerated() {
      table[(first + index) * words] = entry
      if words == 2, let bitmaps { table[(first + index) * 2 + 1] = bitmaps[index] }
    }
    var bytes = [UInt8](repeating: 0, count: range.count * 8)
    for (index, word) in table.words[range].enumerated() { bytes.setUInt64(word, at: index * 8) }
    do {
      // An entry written through may keep a cluster whose refcount is
      // still cached (a zero flag over a new allocation).
      try await writeRefcountDependency(node)
      let file = try fileNode(node)
      try await recordingL2Failure(at: l2Offset) {
        try await file.emit(.l2Update)
        try await file.write(at: l2Offset + Int64(range.lowerBound) * 8, bytes: bytes)
      }
    } catch {
      for (index, word) in zip(range, previous) { table[index] = word }
      throw error
    }
    // Still the cached table (and now the most recently used one).
    l2Cache.insert(table, at: l2Offset)
  }

  /// Changes entries `first ..< first + entries.count` of the cached L2
  /// table at `l2Offset` (and their subcluster bitmaps when given) and
  /// leaves the table dirty for write-back (see
  /// ``markL2Dirty(_:at:dependsOnRefcounts:)``). Call with the lock held.
  func linkL2Entries(
    _ node: BlockNode, l2Offset: Int64, first: Int, _ entries: [UInt64], bitmaps: [UInt64]?,
    dependsOnRefcounts: Bool
  ) async throws {
    let table = try await l2Table(node, at: l2Offset)
    let words = header.l2EntryWords
    for (index, entry) in entries.enumerated() {
      table[(first + index) * words] = entry
      if words == 2, let bitmaps { table[(first + index) * 2 + 1] = bitmaps[index] }
    }
    try await markL2Dirty(node, at: l2Offset, dependsOnRefcounts: dependsOnRefcounts)
  }

  /// Drops the references an old L2 entry held (QEMU's
  /// `qcow2_free_any_cluster`), after the entry that replaced it was written
  /// and flushed; freed clusters leave the L2 cache.
  func releaseClusters(
    _ node: BlockNode, oldEntries: [UInt64], discard: Qcow2DiscardType = .never
  ) async throws {
    let file = try fileNode(node)
    var ranges: [(Int64, Int64)] = []
    for entry in oldEntries {
      switch clusterType(entry) {
      case .compressed:
        let descriptor = Qcow2CompressedDescriptor(entry: entry, clusterBits: header.clusterBits)
        ranges.append((descriptor.offset & ~511, descriptor.length + (descriptor.offset & 511)))
      case .normal, .zeroAllocated, .unallocatedAllocated:
        ranges.append((Int64(entry & Qcow2Entry.offsetMask), header.clusterSize))
      case .zeroPlain, .unallocated:
        break
      }
    }
    guard !ranges.isEmpty else { return }
    // The entries that dropped the references must be on disk first.
    try await writeBackL2Tables(node)
    try await file.flush()
    if hasDataFile {
      // External data clusters carry no refcount (QEMU's qcow2_free_any_cluster
      // only passes the discard down when pass-discard-request is on).
      try await discardInDataFile(node, ranges)
      return
    }
    let refcounts = try refcountsForWrite()
    for (offset, bytes) in ranges {
      // As QEMU's qcow2_free_any_cluster: a failed decrement only leaks.
      guard let freed = try? await refcounts.free(offset: offset, bytes: bytes, file: file)
      else { continue }
      for cluster in freed { l2Cache.remove(at: cluster) }
      try await passDiscard(file, freed: freed, type: discard)
    }
  }

  /// The refcount state, present when the image was opened writable.
  func refcountsForWrite() throws -> Qcow2Refcounts {
    guard let refcounts else {
      throw BlockError(.notPermitted, "qcow2: image opened read-only")
    }
    return refcounts
  }
}
