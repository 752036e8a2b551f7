import BlockCore

extension Qcow2Driver {
  /// QEMU's `qcow2_update_snapshot_refcount`: adds `addend` (-1, 0 or +1)
  /// to the refcount of every L2 table the L1 table `l1` points at and of
  /// every cluster those tables use (compressed clusters count once per
  /// entry), then sets each surviving entry's COPIED flag to "refcount is
  /// 1" (QEMU's `QCOW_OFLAG_COPIED`: the cluster may be written in place).
  ///
  /// Order, for crash safety: all refcount changes first, then a barrier
  /// (they are on disk), then the L2 tables whose flags changed (tables
  /// that lost their last reference are not written), then, unless
  /// `addend` is negative, the L1 table at `l1Offset` if its flags changed
  /// (written and flushed). Clusters that became free are discarded at the
  /// end as snapshot discards (`pass-discard-snapshot`). A crash in between
  /// leaves refcounts at worst too high (leaks) and COPIED flags at worst
  /// clear where they could be set, or set on clusters whose only other
  /// reference is a leak. Returns the L1 table with its new flags. Call
  /// with the lock held.
  func updateSnapshotRefcounts(
    _ node: BlockNode, l1: [UInt64], l1Offset: Int64?, addend: Int64
  ) async throws -> [UInt64] {
    let file = try fileNode(node)
    let refcounts = try refcountsForWrite()
    let clusterBits = Int64(header.clusterBits)
    var freed: [Int64] = []
    if addend != 0 {
      // How many times each cluster is reached, in cluster order.
      var reached: [Int64: Int64] = [:]
      for (l1Index, entry) in l1.enumerated() {
        guard let l2Offset = try l2Offset(of: entry, l1Index: l1Index) else { continue }
        let table = try await l2Table(node, at: l2Offset)
        for index in 0..<Int(header.l2Entries) {
          guard let range = try clusters(of: table[index * header.l2EntryWords], l2Offset, index)
          else { continue }
          for cluster in range { reached[cluster, default: 0] += 1 }
        }
        reached[l2Offset >> clusterBits, default: 0] += 1
      }
      for run in Self.runs(of: reached) {
        freed += try await refcounts.update(
          run.first, count: run.count, addend: addend * run.times, file: file)
      }
      for cluster in freed { l2Cache.remove(at: cluster) }
      try await snapshotMetadataBarrier(node)
    }
    var updated = l1
    var l1Changed = false
    for (l1Index, entry) in l1.enumerated() {
      guard let l2Offset = try l2Offset(of: entry, l1Index: l1Index) else { continue }
      let tableRefcount = try await refcounts.refcount(of: l2Offset >> clusterBits, file: file)
      let newEntry = UInt64(l2Offset) | (tableRefcount == 1 ? Qcow2Entry.copied : 0)
      if newEntry != entry {
        updated[l1Index] = newEntry
        l1Changed = true
      }
      guard tableRefcount > 0 else { continue }
      try await updateCopiedFlags(node, l2Offset: l2Offset)
    }
    if addend >= 0, l1Changed, let l1Offset {
      var bytes = [UInt8](repeating: 0, count: updated.count * 8)
      for (index, entry) in updated.enumerated() { bytes.setUInt64(entry, at: index * 8) }
      try await file.write(at: l1Offset, bytes: bytes)
      try await file.flush()
    }
    try await passDiscard(file, freed: freed, type: .snapshot)
    return updated
  }

  /// Sets the COPIED flag of every entry of the L2 table at `l2Offset` from
  /// its cluster's refcount, writing the entries that changed.
  private func updateCopiedFlags(_ node: BlockNode, l2Offset: Int64) async throws {
    let file = try fileNode(node)
    let refcounts = try refcountsForWrite()
    let table = try await l2Table(node, at: l2Offset)
    let words = header.l2EntryWords
    var entries = (0..<Int(header.l2Entries)).map { table[$0 * words] }
    var changed: ClosedRange<Int>?
    for (index, entry) in entries.enumerated() {
      var copied = false
      switch clusterType(entry) {
      case .normal, .zeroAllocated, .unallocatedAllocated:
        let cluster = Int64(entry & Qcow2Entry.offsetMask) >> Int64(header.clusterBits)
        copied = try await refcounts.refcount(of: cluster, file: file) == 1
      case .compressed, .zeroPlain, .unallocated:
        // Compressed clusters are never written in place.
        copied = false
      }
      let newEntry = copied ? entry | Qcow2Entry.copied : entry & ~Qcow2Entry.copied
      guard newEntry != entry else { continue }
      entries[index] = newEntry
      changed = changed.map { min($0.lowerBound, index)...index } ?? index...index
    }
    guard let changed else { return }
    try await writeL2Entries(
      node, l2Offset: l2Offset, first: changed.lowerBound, Array(entries[changed]))
  }

  /// The L2 table offset of an L1 entry, nil when there is none; an
  /// unaligned one is a corruption.
  private func l2Offset(of entry: UInt64, l1Index: Int) throws -> Int64? {
    let offset = Int64(entry & Qcow2Entry.offsetMask)
    guard offset != 0 else { return nil }
    if offset & (header.clusterSize - 1) != 0 {
      throw corruption(
        "L2 table offset \(Self.alternateHex(offset)) unaligned (L1 index: \(Self.alternateHex(l1Index)))"
      )
    }
    return offset
  }

  /// The host clusters an L2 entry holds a reference to.
  private func clusters(of entry: UInt64, _ l2Offset: Int64, _ index: Int) throws -> ClosedRange<
    Int64
  >? {
    let clusterBits = Int64(header.clusterBits)
    switch clusterType(entry) {
    case .compressed:
      let descriptor = Qcow2CompressedDescriptor(entry: entry, clusterBits: header.clusterBits)
      return
        (descriptor.offset >> clusterBits)...((descriptor.offset + descriptor.length - 1)
        >> clusterBits)
    case .normal, .zeroAllocated, .unallocatedAllocated:
      let offset = Int64(entry & Qcow2Entry.offsetMask)
      if offset & (header.clusterSize - 1) != 0 {
        throw corruption(
          "Cluster allocation offset \(Self.alternateHex(offset)) unaligned (L2 offset: \(Self.alternateHex(l2Offset)), L2 index: \(Self.alternateHex(index)))"
        )
      }
      return (offset >> clusterBits)...(offset >> clusterBits)
    case .zeroPlain, .unallocated:
      return nil
    }
  }

  /// Consecutive clusters reached the same number of times, in order.
  private static func runs(of reached: [Int64: Int64]) -> [(
    first: Int64, count: Int64, times: Int64
  )] {
    var runs: [(first: Int64, count: Int64, times: Int64)] = []
    for (cluster, times) in reached.sorted(by: { $0.key < $1.key }) {
      if let last = runs.last, last.first + last.count == cluster, last.times == times {
        runs[runs.count - 1].count += 1
      } else {
        runs.append((cluster, 1, times))
      }
    }
    return runs
  }
}
