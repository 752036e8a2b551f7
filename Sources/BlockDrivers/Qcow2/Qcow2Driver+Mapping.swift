import BlockCore

/// Where a run of guest bytes lives (QEMU's `qcow2_get_host_offset` answer).
struct Qcow2Mapping {
  /// The type shared by every cluster of the run.
  let type: Qcow2ClusterType
  /// For normal and preallocated-zero runs: the host offset of the first byte.
  let hostOffset: Int64
  /// For a compressed cluster: its L2 entry.
  let entry: UInt64
  /// Bytes from the queried offset that the answer covers (at least 1).
  let count: Int64
}

extension Qcow2Driver {
  /// The mapping of the run starting at guest `offset`, at most `bytes` long
  /// and never beyond one L2 table: contiguous clusters of one type, with
  /// contiguous host clusters for data; a compressed cluster stands alone.
  func mapping(_ node: BlockNode, offset: Int64, bytes: Int64) async throws -> Qcow2Mapping {
    let clusterSize = header.clusterSize
    let inCluster = offset & (clusterSize - 1)
    let l2Bits = header.l2Bits
    let clusterIndex = offset >> Int64(header.clusterBits)
    let l1Index = Int(clusterIndex >> l2Bits)
    let l2Index = Int(clusterIndex & ((1 << l2Bits) - 1))
    let available = (header.l2Entries - Int64(l2Index)) * clusterSize - inCluster
    let wanted = min(bytes, available)
    let l2Offset = l1Index < l1Table.count ? Int64(l1Table[l1Index] & Qcow2Entry.offsetMask) : 0
    if l2Offset == 0 {
      return Qcow2Mapping(type: .unallocated, hostOffset: 0, entry: 0, count: wanted)
    }
    if l2Offset & (clusterSize - 1) != 0 {
      throw corruption(
        "L2 table offset \(Self.alternateHex(l2Offset)) unaligned (L1 index: \(Self.alternateHex(l1Index)))"
      )
    }
    let table = try await l2Table(node, at: l2Offset)
    if header.extendedL2 {
      return try checkDataFileOffset(
        subclusterMapping(
          table: table, l2Offset: l2Offset, l2Index: l2Index, offset: offset, wanted: wanted),
        guestOffset: offset, l2Index: l2Index)
    }
    let first = table[l2Index]
    let type = clusterType(first)
    let firstHost = Int64(first & Qcow2Entry.offsetMask)
    if type == .normal || type == .zeroAllocated, firstHost & (clusterSize - 1) != 0 {
      throw corruption(
        "Cluster allocation offset \(Self.alternateHex(firstHost)) unaligned (L2 offset: \(Self.alternateHex(l2Offset)), L2 index: \(Self.alternateHex(l2Index)))"
      )
    }
    if type == .compressed {
      return Qcow2Mapping(
        type: .compressed, hostOffset: 0, entry: first,
        count: min(wanted, clusterSize - inCluster))
    }
    let clustersWanted = Int((inCluster + wanted + clusterSize - 1) >> Int64(header.clusterBits))
    var clusters = 1
    while clusters < clustersWanted {
      let entry = table[l2Index + clusters]
      guard clusterType(entry) == type else { break }
      if type == .normal || type == .zeroAllocated,
        Int64(entry & Qcow2Entry.offsetMask) != firstHost + Int64(clusters) * clusterSize
      {
        break
      }
      clusters += 1
    }
    let count = min(wanted, Int64(clusters) * clusterSize - inCluster)
    let host = type == .normal || type == .zeroAllocated ? firstHost + inCluster : 0
    return try checkDataFileOffset(
      Qcow2Mapping(type: type, hostOffset: host, entry: first, count: count),
      guestOffset: offset, l2Index: l2Index)
  }

  /// In an image with an external data file, data sits at its guest offset:
  /// any other host offset is corruption (QEMU's `qcow2_get_host_offset`).
  private func checkDataFileOffset(_ run: Qcow2Mapping, guestOffset: Int64, l2Index: Int) throws
    -> Qcow2Mapping
  {
    guard hasDataFile, run.type.hasHostOffset, run.hostOffset != guestOffset else { return run }
    let mask = header.clusterSize - 1
    throw corruption(
      "External data file host cluster offset \(Self.alternateHex(run.hostOffset & ~mask)) does not match guest cluster offset: \(Self.alternateHex(guestOffset & ~mask)), L2 index: \(Self.alternateHex(l2Index)))"
    )
  }

  /// The decoded L2 table at `offset`, from the cache or the file.
  func l2Table(_ node: BlockNode, at offset: Int64) async throws -> Qcow2L2Table {
    if let table = l2Cache.table(at: offset) { return table }
    if let clash = metadataOverlap(offset, length: header.clusterSize) {
      throw corruption("L2 table offset 0x\(String(offset, radix: 16)) overlaps with \(clash)")
    }
    let file = try fileNode(node)
    let iov = IOVector(allocating: Int(header.clusterSize))
    try await file.emit(.l2Load)
    try await file.read(at: offset, into: iov)
    let table = Qcow2L2Table(
      words: iov.toArray().bigEndianUInt64s(count: Int(header.clusterSize / 8)))
    l2Cache.insert(table, at: offset)
    return table
  }

  /// The metadata structure that `length` bytes at host `offset` would
  /// overlap (the header, the active L1 table or the refcount table), if any:
  /// an L2 table there is a corruption, and writing to it would destroy the
  /// image (QEMU's overlap check for these structures).
  func metadataOverlap(_ offset: Int64, length: Int64) -> String? {
    func overlaps(_ start: Int64, _ bytes: Int64) -> Bool {
      offset < start + bytes && start < offset + length
    }
    if overlaps(0, header.clusterSize) { return "qcow2_header" }
    if overlaps(Int64(header.l1TableOffset), Int64(header.l1Size) * 8) { return "active L1 table" }
    let tableOffset = refcounts?.tableOffset ?? Int64(header.refcountTableOffset)
    let tableBytes =
      refcounts.map { Int64($0.table.count) * 8 }
      ?? Int64(header.refcountTableClusters) * header.clusterSize
    if overlaps(tableOffset, tableBytes) { return "refcount table" }
    return nil
  }

  /// The error QEMU's `qcow2_signal_corruption` leads to for a read: EIO with
  /// the corruption's description.
  func corruption(_ message: String) -> BlockError {
    BlockError(.ioError, Self.corruptionPrefix + message)
  }
}
