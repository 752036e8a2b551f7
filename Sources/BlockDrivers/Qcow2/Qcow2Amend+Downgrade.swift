import BlockCore

extension Qcow2Driver {
  /// QEMU's `qcow2_downgrade` to version 2: refused for what version 2
  /// cannot express; zero clusters become data clusters (or unallocated
  /// ones without a backing file); feature bits and the feature table go.
  func downgrade(_ node: BlockNode, file: BlockNode, status: Qcow2AmendProgress) async throws {
    if header.refcountOrder != 4 {
      throw BlockError(.notSupported, "compat=0.10 requires refcount_bits=16")
    }
    if header.incompatibleFeatures & Qcow2Feature.externalDataFile != 0 {
      throw BlockError(.notSupported, "Cannot downgrade an image with a data file")
    }
    let (snapshots, _) = try await Qcow2SnapshotEntry.readTable(file, header: header)
    if snapshots.contains(where: {
      $0.vmStateSize > UInt64(UInt32.max) || $0.diskSize != header.size
    }) {
      throw BlockError(.notSupported, "Internal snapshots prevent downgrade of image")
    }
    let others = header.incompatibleFeatures & ~Qcow2Feature.compressionType
    if others != 0 {
      throw BlockError(
        .notSupported,
        "Cannot downgrade an image with incompatible features 0x\(String(others, radix: 16)) set")
    }
    try await lock.withLock {
      try await expandZeroClusters(node, file: file, snapshots: snapshots, status: status)
    }
    if header.compressionType != 0 {
      throw BlockError(
        .notSupported,
        "Cannot downgrade an image with zstd compression type and existing compressed clusters")
    }
    try await rewriteHeader(file) { header in
      header.compatibleFeatures = 0
      header.autoclearFeatures = 0
      header.version = 2
      header.headerLength = 72
      header.extensions.removeAll { $0.type == Qcow2HeaderExtension.featureNameTable }
    }
  }

  /// QEMU's `qcow2_expand_zero_clusters`: in the L2 tables of the active
  /// and then the snapshots' L1 tables, plain zero clusters without a
  /// backing file become unallocated; other zero clusters get a zeroed host
  /// cluster (counted once per reference to a shared L2 table).
  private func expandZeroClusters(
    _ node: BlockNode, file: BlockNode, snapshots: [Qcow2SnapshotEntry],
    status: Qcow2AmendProgress
  ) async throws {
    let total = Int64(l1Table.count) + snapshots.reduce(0) { $0 + Int64($1.l1Size) }
    var visited: Int64 = 0
    try await expandZeroClusters(
      node, file: file, l1: l1Table, visited: &visited, of: total, status: status)
    for snapshot in snapshots {
      let bytes = Int(snapshot.l1Size) * 8
      guard snapshot.l1TableOffset & UInt64(header.clusterSize - 1) == 0,
        UInt64(bytes) <= Qcow2Header.maxL1Bytes,
        Int64(snapshot.l1TableOffset) + Int64(bytes) <= file.length
      else {
        throw BlockError(.invalidArgument, "Snapshot L1 table offset invalid")
      }
      let l1 = try await file.read(at: Int64(snapshot.l1TableOffset), count: bytes)
        .bigEndianUInt64s(count: Int(snapshot.l1Size))
      try await expandZeroClusters(
        node, file: file, l1: l1, visited: &visited, of: total, status: status)
    }
    l2Cache = Qcow2L2Cache(capacity: l2Cache.capacity)
  }

  /// The expansion for the L2 tables of one L1 table.
  private func expandZeroClusters(
    _ node: BlockNode, file: BlockNode, l1: [UInt64], visited: inout Int64, of total: Int64,
    status: Qcow2AmendProgress
  ) async throws {
    let refcounts = try refcountsForWrite()
    for index in l1.indices {
      let l2Offset = Int64(l1[index] & Qcow2Entry.offsetMask)
      defer {
        visited += 1
        status.update(visited, of: total)
      }
      guard l2Offset != 0 else { continue }
      if l2Offset & (header.clusterSize - 1) != 0 {
        throw BlockError(.ioError)
      }
      var table = try await file.read(at: l2Offset, count: Int(header.clusterSize))
        .bigEndianUInt64s(count: Int(header.l2Entries))
      let l2Refcount = try await refcounts.refcount(of: l2Offset >> header.clusterBits, file: file)
      var dirty = false
      for slot in table.indices {
        let entry = table[slot]
        let type = Qcow2Entry.type(of: entry)
        guard type == .zeroPlain || type == .zeroAllocated else { continue }
        var offset = Int64(entry & Qcow2Entry.offsetMask)
        if type == .zeroPlain {
          if node.backing == nil {
            table[slot] = 0
            dirty = true
            continue
          }
          offset = try await refcounts.allocate(clusters: 1, file: file)
          if l2Refcount > 1 {
            _ = try await refcounts.update(
              offset >> header.clusterBits, count: 1, addend: Int64(l2Refcount) - 1, file: file)
          }
        }
        if offset & (header.clusterSize - 1) != 0 { throw BlockError(.ioError) }
        try await file.writeZeroes(at: offset, count: header.clusterSize)
        table[slot] = l2Refcount == 1 ? UInt64(offset) | Qcow2Entry.copied : UInt64(offset)
        dirty = true
      }
      if dirty {
        try await file.flush()
        var bytes = [UInt8](repeating: 0, count: Int(header.clusterSize))
        for (slot, entry) in table.enumerated() { bytes.setUInt64(entry, at: slot * 8) }
        try await file.write(at: l2Offset, bytes: bytes)
        try await file.flush()
        l2Cache.remove(at: l2Offset)
      }
    }
  }
}
