import BlockCore

/// An L2 entry and its subcluster bitmap (0 without extended L2 entries).
typealias Qcow2L2Slot = (entry: UInt64, bitmap: UInt64)

extension Qcow2Driver {
  /// QEMU's `qcow2_co_pwrite_zeroes` for whole (sub)clusters of a v3 image:
  /// each cluster gets the zero flag (with extended L2 entries: all zero
  /// bits), keeping its host cluster unless MAY_UNMAP (or compression) lets it
  /// go; partial clusters get zero bits for their subclusters. A partial
  /// subcluster is zeroed whole when the rest of it already reads as zeroes
  /// and it holds no data. A v2 image has no zero flag: without a backing file
  /// its clusters are discarded (they then read as zeroes). Anything else is
  /// ENOTSUP: the engine then writes zeroes.
  func zeroClusters(_ node: BlockNode, offset: Int64, length: Int64, flags: RequestFlags)
    async throws
  {
    var offset = offset
    var length = length
    let unit = header.subclusterSize
    let mask = unit - 1
    let head = offset & mask
    let tail =
      offset + length == Int64(header.size) ? 0 : (mask + 1 - (offset + length) & mask) & mask
    let partial = head != 0 || tail != 0
    if partial {
      guard head + length + tail <= unit,
        try await readsAsZero(node, offset: offset - head, bytes: head),
        try await readsAsZero(node, offset: offset + length, bytes: tail)
      else { throw BlockError.notSupported() }
      offset -= head
      length = min(unit, Int64(header.size) - offset)
      try await lock.withLock { try await requireNoData(node, offset: offset, bytes: length) }
    }
    try checkAligned(offset: offset, length: length, unit: unit)
    try await zeroRawDataFile(node, offset: offset, length: length, flags: flags)
    guard header.version >= 3 else {
      if node.backing != nil { throw BlockError.notSupported() }
      try await discardClusters(node, offset: offset, length: length)
      return
    }
    let unmapAllowed = flags.contains(.mayUnmap)
    let extended = header.extendedL2
    // QEMU's qcow2_subcluster_zeroize: a partial first cluster, whole
    // clusters, a partial last cluster.
    let clusterSize = header.clusterSize
    let end = offset + length
    let headBytes = min(end, (offset + clusterSize - 1) & ~(clusterSize - 1)) - offset
    let middle = offset + headBytes
    let tailBytes =
      end >= Int64(header.size) ? 0 : end - max(middle, end & ~(clusterSize - 1))
    try await lock.withLock {
      // Checked again in the lock section that zeroes: a write may have put
      // data there since (QEMU's "We can have new write after previous
      // check"), and zeroing the whole subcluster would lose it.
      if partial { try await requireNoData(node, offset: offset, bytes: length) }
      if headBytes > 0 { try await zeroSubclusters(node, offset: offset, bytes: headBytes) }
      try await rewriteEntries(node, offset: middle, length: end - tailBytes - middle) { slot in
        let type = clusterType(slot.entry)
        let unmap =
          type == .compressed
          || (unmapAllowed && (type == .normal || type == .zeroAllocated))
        let entry = unmap ? 0 : slot.entry
        return extended
          ? (entry, Qcow2SubclusterBitmap.allZeroes) : (entry | Qcow2Entry.zero, 0)
      }
      if tailBytes > 0 {
        try await zeroSubclusters(node, offset: end - tailBytes, bytes: tailBytes)
      }
    }
  }

  /// Refuses (ENOTSUP: the engine then writes zeroes) to zero a subcluster
  /// widened from a partial zero-write when it holds data. Call with the
  /// lock held.
  private func requireNoData(_ node: BlockNode, offset: Int64, bytes: Int64) async throws {
    let type = try await mapping(node, offset: offset, bytes: bytes).type
    guard [.unallocated, .unallocatedAllocated, .zeroPlain, .zeroAllocated].contains(type)
    else { throw BlockError.notSupported() }
  }

  /// QEMU's `qcow2_co_pdiscard` (not a full discard): discarded clusters read
  /// as zeroes on v3 images (unallocated on v2), and their host clusters are
  /// freed. Partial clusters are ignored (ENOTSUP). A v2 image with a backing
  /// file declines (ENOTSUP) as a whole: it cannot record a zero cluster, so
  /// a discarded cluster would show the backing file's data.
  func discardRequest(_ node: BlockNode, offset: Int64, length: Int64) async throws {
    if header.version < 3 && node.backing != nil { throw BlockError.notSupported() }
    try checkAligned(offset: offset, length: length, unit: header.clusterSize)
    try await discardClusters(node, offset: offset, length: length)
  }

  /// QEMU's `qcow2_cluster_discard` with `full_discard` false.
  private func discardClusters(_ node: BlockNode, offset: Int64, length: Int64) async throws {
    let hasBacking = node.backing != nil
    let zero: Qcow2L2Slot =
      header.extendedL2
      ? (0, Qcow2SubclusterBitmap.allZeroes) : (header.version >= 3 ? Qcow2Entry.zero : 0, 0)
    try await lock.withLock {
      try await rewriteEntries(node, offset: offset, length: length) { slot in
        let type = clusterType(slot.entry)
        let allocated = type == .normal || type == .zeroAllocated || type == .compressed
        return hasBacking || allocated ? zero : slot
      }
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

  /// Whole units (clusters or subclusters), or the partial last one of an
  /// image whose size is not aligned to them.
  private func checkAligned(offset: Int64, length: Int64, unit: Int64) throws {
    let mask = unit - 1
    if offset & mask != 0 { throw BlockError.notSupported() }
    if length & mask != 0 && offset + length != Int64(header.size) {
      throw BlockError.notSupported()
    }
  }

  /// Replaces the L2 entries (and bitmaps) of the clusters in the range with
  /// `transform`'s answer, L2 table by L2 table (QEMU's `zero_in_l2_slice`
  /// and `discard_in_l2_slice`): the entries first, then the refcounts of the
  /// clusters they no longer use, discarded in the file as `discard` says.
  /// Call with the lock held.
  func rewriteEntries(
    _ node: BlockNode, offset: Int64, length: Int64, discard: Qcow2DiscardType = .request,
    _ transform: (Qcow2L2Slot) -> Qcow2L2Slot
  ) async throws {
    guard length > 0 else { return }
    let clusterBits = Int64(header.clusterBits)
    var cluster = offset >> clusterBits
    let end = (offset + length + header.clusterSize - 1) >> clusterBits
    while cluster < end {
      let l2Offset = try await l2TableForWrite(node, offset: cluster << clusterBits)
      let table = try await l2Table(node, at: l2Offset)
      let first = Int(cluster & (header.l2Entries - 1))
      let count = Int(min(end - cluster, header.l2Entries - Int64(first)))
      let old: [Qcow2L2Slot] = (first..<first + count).map {
        (entry: l2Entry(table, $0), bitmap: l2Bitmap(table, $0))
      }
      let new = old.map(transform)
      if !old.elementsEqual(new, by: { $0.entry == $1.entry && $0.bitmap == $1.bitmap }) {
        try await writeL2Entries(
          node, l2Offset: l2Offset, first: first, new.map(\.entry), bitmaps: new.map(\.bitmap))
        let dropped = zip(old, new).compactMap { old, new in
          clusterType(old.entry).hasHostCluster && !clusterType(new.entry).hasHostCluster
            ? old.entry : nil
        }
        try await releaseClusters(node, oldEntries: dropped, discard: discard)
      }
      cluster += Int64(count)
    }
  }
}
