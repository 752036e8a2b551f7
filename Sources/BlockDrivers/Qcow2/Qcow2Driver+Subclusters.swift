import BlockCore

/// Extended L2 entries (subclusters) in the driver: entry access in decoded
/// tables, mapping runs of subclusters, and which subclusters a write
/// completes and marks allocated (QEMU 7.2's `qcow2_get_host_offset`,
/// `calculate_l2_meta` and `qcow2_alloc_cluster_link_l2`). Without extended
/// L2 entries a subcluster is the whole cluster, so the same rules give the
/// standard behaviour.
extension Qcow2Driver {
  /// The L2 entry (offset and flags) at `index` of a decoded table.
  func l2Entry(_ table: Qcow2L2Table, _ index: Int) -> UInt64 {
    table[index * header.l2EntryWords]
  }

  /// The subcluster bitmap at `index` (0 without extended L2 entries).
  func l2Bitmap(_ table: Qcow2L2Table, _ index: Int) -> UInt64 {
    header.extendedL2 ? table[index * 2 + 1] : 0
  }

  /// The type of subcluster `index` of an entry; nil when the entry is invalid.
  func subclusterType(_ entry: UInt64, _ bitmap: UInt64, index: Int) -> Qcow2ClusterType? {
    guard header.extendedL2 else { return clusterType(entry) }
    return Qcow2SubclusterBitmap.type(
      entry: entry, bitmap: bitmap, index: index, dataFile: hasDataFile)
  }

  /// The subcluster holding guest `offset` within its cluster.
  func subclusterIndex(_ offset: Int64) -> Int {
    Int((offset & (header.clusterSize - 1)) / header.subclusterSize)
  }

  /// The mapping of the run at guest `offset` in the L2 table at `l2Offset`
  /// (entry `l2Index`), at most `wanted` bytes: contiguous subclusters of one
  /// type, with contiguous host clusters for types with a host offset (QEMU's
  /// `count_contiguous_subclusters`).
  func subclusterMapping(
    table: Qcow2L2Table, l2Offset: Int64, l2Index: Int, offset: Int64, wanted: Int64
  ) throws -> Qcow2Mapping {
    let clusterSize = header.clusterSize
    let inCluster = offset & (clusterSize - 1)
    let firstSubcluster = subclusterIndex(offset)
    let clustersWanted = Int((inCluster + wanted + clusterSize - 1) / clusterSize)
    var count = 0
    var runType = Qcow2ClusterType.unallocated
    var expectedHost: Int64 = 0
    for cluster in 0..<clustersWanted {
      let from = cluster == 0 ? firstSubcluster : 0
      let entry = l2Entry(table, l2Index + cluster)
      guard
        let run = Qcow2SubclusterBitmap.run(
          entry: entry, bitmap: l2Bitmap(table, l2Index + cluster), from: from,
          dataFile: hasDataFile)
      else {
        throw corruption(
          "Invalid cluster entry found  (L2 offset: \(Self.alternateHex(l2Offset)), L2 index: \(Self.alternateHex(l2Index + cluster)))"
        )
      }
      let host = Int64(entry & Qcow2Entry.offsetMask)
      if cluster == 0 {
        if run.type == .compressed {
          return Qcow2Mapping(
            type: .compressed, hostOffset: 0, entry: entry,
            count: min(wanted, clusterSize - inCluster))
        }
        if run.type.hasHostOffset && host & (clusterSize - 1) != 0 {
          throw corruption(
            "Cluster allocation offset \(Self.alternateHex(host)) unaligned (L2 offset: \(Self.alternateHex(l2Offset)), L2 index: \(Self.alternateHex(l2Index)))"
          )
        }
        runType = run.type
        expectedHost = host
      } else if run.type != runType {
        break
      } else if runType.hasHostOffset {
        expectedHost += clusterSize
        if host != expectedHost { break }
      }
      count += run.count
      if from + run.count < header.subclustersPerCluster { break }
    }
    let available = Int64(count + firstSubcluster) * header.subclusterSize
    let bytes = min(available, inCluster + wanted) - inCluster
    let first = l2Entry(table, l2Index)
    let host = runType.hasHostOffset ? Int64(first & Qcow2Entry.offsetMask) + inCluster : 0
    return Qcow2Mapping(type: runType, hostOffset: host, entry: first, count: bytes)
  }

  /// For a write of `bytes` at `offset` into kept (COPIED) clusters: nil when
  /// every subcluster it touches already holds data (a plain in-place write),
  /// else the guest range to complete and mark allocated (QEMU's
  /// `calculate_l2_meta` with `keep_old`).
  func keptClustersCOW(
    _ table: Qcow2L2Table, l2Index: Int, clusters: Int, offset: Int64, bytes: Int64
  ) throws -> (start: Int64, end: Int64)? {
    let clusterSize = header.clusterSize
    let clusterStart = offset & ~(clusterSize - 1)
    let end = offset + bytes
    let touched = Int((end - clusterStart + clusterSize - 1) / clusterSize)
    var inPlace = true
    for cluster in 0..<touched {
      let from = max(offset, clusterStart + Int64(cluster) * clusterSize)
      let to = min(end, clusterStart + Int64(cluster + 1) * clusterSize)
      let firstSubcluster = subclusterIndex(from)
      let lastSubcluster = subclusterIndex(to - 1)
      let entry = l2Entry(table, l2Index + cluster)
      let bitmap = l2Bitmap(table, l2Index + cluster)
      if header.extendedL2 {
        guard
          let run = Qcow2SubclusterBitmap.run(
            entry: entry, bitmap: bitmap, from: firstSubcluster, dataFile: hasDataFile)
        else { throw invalidEntry(l2Index + cluster, guestOffset: from) }
        if run.type != .normal || firstSubcluster + run.count <= lastSubcluster { inPlace = false }
      } else if clusterType(entry) != .normal {
        inPlace = false
      }
    }
    if inPlace { return nil }
    let firstType = try typeAt(table, l2Index, offset)
    let lastType = try typeAt(table, l2Index + touched - 1, end - 1)
    let subclusterSize = header.subclusterSize
    let start =
      firstType == .normal ? offset : offset & ~(subclusterSize - 1)
    let finish =
      lastType == .normal ? end : (end + subclusterSize - 1) & ~(subclusterSize - 1)
    return (start, finish)
  }

  /// For a write of `bytes` at `offset` into newly allocated clusters: the
  /// guest range written to them, the write plus the copy-on-write regions
  /// (QEMU's `calculate_l2_meta` without `keep_old`): whole clusters when the
  /// old clusters held data (less their unallocated edge subclusters), only
  /// the touched subclusters when they held none.
  func newClustersCOW(
    _ table: Qcow2L2Table, l2Index: Int, clusters: Int, offset: Int64, bytes: Int64
  ) throws -> (start: Int64, end: Int64) {
    let clusterSize = header.clusterSize
    let subclusterSize = header.subclusterSize
    let clusterStart = offset & ~(clusterSize - 1)
    let end = offset + bytes
    let touched = Int((end - clusterStart + clusterSize - 1) / clusterSize)
    for cluster in 0..<touched {
      _ = try typeAt(table, l2Index + cluster, clusterStart + Int64(cluster) * clusterSize)
    }
    let firstSubcluster = subclusterIndex(offset)
    let start: Int64
    switch try typeAt(table, l2Index, offset) {
    case .compressed:
      start = clusterStart
    case .normal, .zeroAllocated, .unallocatedAllocated:
      // Leading subclusters never allocated need no copy.
      let allocated = UInt32(truncatingIfNeeded: l2Bitmap(table, l2Index))
      let skip = header.extendedL2 ? min(firstSubcluster, allocated.trailingZeroBitCount) : 0
      start = clusterStart + Int64(skip) * subclusterSize
    case .zeroPlain, .unallocated:
      start = offset & ~(subclusterSize - 1)
    }
    let lastIndex = l2Index + touched - 1
    let lastSubcluster = subclusterIndex(end - 1)
    let clusterEnd = (end + clusterSize - 1) & ~(clusterSize - 1)
    let finish: Int64
    switch try typeAt(table, lastIndex, end - 1) {
    case .compressed:
      finish = clusterEnd
    case .normal, .zeroAllocated, .unallocatedAllocated:
      // Trailing subclusters never allocated need no copy.
      let allocated = UInt32(truncatingIfNeeded: l2Bitmap(table, lastIndex))
      let skip =
        header.extendedL2
        ? min(header.subclustersPerCluster - lastSubcluster - 1, allocated.leadingZeroBitCount)
        : 0
      finish = clusterEnd - Int64(skip) * subclusterSize
    case .zeroPlain, .unallocated:
      finish = (end + subclusterSize - 1) & ~(subclusterSize - 1)
    }
    return (start, finish)
  }

  /// The bitmaps of `clusters` entries from `l2Index` once the guest range
  /// `from ..< to` was written to them: its subclusters allocated and no
  /// longer zero (QEMU's `qcow2_alloc_cluster_link_l2`); nil without
  /// extended L2 entries.
  func writtenBitmaps(_ table: Qcow2L2Table, l2Index: Int, clusters: Int, from: Int64, to: Int64)
    -> [UInt64]?
  {
    guard header.extendedL2 else { return nil }
    let clusterSize = header.clusterSize
    let firstCluster = from & ~(clusterSize - 1)
    return (0..<clusters).map { cluster in
      var bitmap = l2Bitmap(table, l2Index + cluster)
      let clusterStart = firstCluster + Int64(cluster) * clusterSize
      let low = max(from, clusterStart)
      let high = min(to, clusterStart + clusterSize)
      if low < high {
        let first = subclusterIndex(low)
        let last = subclusterIndex(high - 1)
        bitmap |= Qcow2SubclusterBitmap.allocated(first, last + 1)
        bitmap &= ~Qcow2SubclusterBitmap.zeroes(first, last + 1)
      }
      return bitmap
    }
  }

  /// QEMU's `zero_l2_subclusters`: subclusters of one cluster, from guest
  /// `offset` for `bytes`, read as zeroes; a compressed cluster cannot be
  /// partly zeroed (ENOTSUP). Call with the lock held.
  func zeroSubclusters(_ node: BlockNode, offset: Int64, bytes: Int64) async throws {
    let l2Offset = try await l2TableForWrite(node, offset: offset)
    let table = try await l2Table(node, at: l2Offset)
    let l2Index = Int((offset >> Int64(header.clusterBits)) & (header.l2Entries - 1))
    let entry = l2Entry(table, l2Index)
    if clusterType(entry) == .compressed { throw BlockError.notSupported() }
    let first = subclusterIndex(offset)
    let count = Int((bytes + header.subclusterSize - 1) / header.subclusterSize)
    let old = l2Bitmap(table, l2Index)
    let bitmap =
      (old | Qcow2SubclusterBitmap.zeroes(first, first + count))
      & ~Qcow2SubclusterBitmap.allocated(first, first + count)
    if bitmap != old {
      try await writeL2Entries(
        node, l2Offset: l2Offset, first: l2Index, [entry], bitmaps: [bitmap])
    }
  }

  /// The type of the subcluster holding guest `offset` in entry `index`.
  private func typeAt(_ table: Qcow2L2Table, _ index: Int, _ offset: Int64) throws
    -> Qcow2ClusterType
  {
    guard
      let type = subclusterType(
        l2Entry(table, index), l2Bitmap(table, index), index: subclusterIndex(offset))
    else { throw invalidEntry(index, guestOffset: offset) }
    return type
  }

  /// The corruption error for an entry whose bitmap contradicts itself or
  /// its offset.
  /// its offset, with the L2 table the active L1 table maps `guestOffset`
  /// to (QEMU's message in `calculate_l2_meta`).
  private func invalidEntry(_ index: Int, guestOffset: Int64) -> BlockError {
    let l1Index = Int(guestOffset >> (Int64(header.clusterBits) + header.l2Bits))
    let l2Offset = l1Index < l1Table.count ? l1Table[l1Index] & Qcow2Entry.offsetMask : 0
    // One space here, two in the read path's message, as in QEMU 7.2.
    return corruption(
      "Invalid cluster entry found (L2 offset: \(Self.alternateHex(l2Offset)), L2 index: \(Self.alternateHex(index)))"
    )
  }
}
