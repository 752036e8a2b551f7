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
    let l2Bits = Int64(header.clusterBits) - 3
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
    let first = table[l2Index]
    let type = Qcow2Entry.type(of: first)
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
      guard Qcow2Entry.type(of: entry) == type else { break }
      if type == .normal || type == .zeroAllocated,
        Int64(entry & Qcow2Entry.offsetMask) != firstHost + Int64(clusters) * clusterSize
      {
        break
      }
      clusters += 1
    }
    let count = min(wanted, Int64(clusters) * clusterSize - inCluster)
    let host = type == .normal || type == .zeroAllocated ? firstHost + inCluster : 0
    return Qcow2Mapping(type: type, hostOffset: host, entry: first, count: count)
  }

  /// The decoded L2 table at `offset`, from the cache or the file.
  func l2Table(_ node: BlockNode, at offset: Int64) async throws -> [UInt64] {
    if let table = l2Cache.table(at: offset) { return table }
    let file = try fileNode(node)
    let iov = IOVector(allocating: Int(header.clusterSize))
    try await file.read(at: offset, into: iov)
    let table = iov.toArray().bigEndianUInt64s(count: Int(header.l2Entries))
    l2Cache.insert(table, at: offset)
    return table
  }

  /// The error QEMU's `qcow2_signal_corruption` leads to for a read: EIO with
  /// the corruption's description.
  func corruption(_ message: String) -> BlockError {
    BlockError(.ioError, Self.corruptionPrefix + message)
  }
}
