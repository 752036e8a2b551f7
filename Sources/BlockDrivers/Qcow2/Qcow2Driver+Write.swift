import BlockCore

extension Qcow2Driver {
  /// Whether writing to a cluster with this L2 entry needs a new cluster
  /// (QEMU's `cluster_needs_new_alloc`): all but COPIED data clusters do.
  static func needsAllocation(_ entry: UInt64) -> Bool {
    switch Qcow2Entry.type(of: entry) {
    case .normal, .zeroAllocated: return entry & Qcow2Entry.copied == 0
    case .unallocated, .zeroPlain, .compressed: return true
    }
  }

  /// Writes one run of `iov` at guest `offset` (at most one L2 table's worth)
  /// and returns how many bytes it covered and the host offset right after
  /// them: in place for COPIED clusters, else into newly allocated clusters
  /// (QEMU's `qcow2_alloc_host_offset` and `qcow2_co_pwritev_task`). When the
  /// previous run of the same request ended at host `continuing`, new clusters
  /// go there if it is free, as QEMU's `qcow2_alloc_clusters_at` puts them.
  func writeRun(_ node: BlockNode, offset: Int64, iov: IOVector, continuing: Int64?)
    async throws -> (bytes: Int64, hostEnd: Int64)
  {
    let file = try fileNode(node)
    enum Plan {
      case inPlace(host: Int64, bytes: Int64)
      case done(Int64, hostEnd: Int64)
    }
    let plan: Plan = try await lock.withLock {
      let clusterSize = header.clusterSize
      let l2Offset = try await l2TableForWrite(node, offset: offset)
      let table = try await l2Table(node, at: l2Offset)
      let inCluster = offset & (clusterSize - 1)
      let l2Index = Int((offset >> Int64(header.clusterBits)) & (header.l2Entries - 1))
      let wantedClusters = Int((inCluster + Int64(iov.count) + clusterSize - 1) / clusterSize)
      let clusters = min(wantedClusters, Int(header.l2Entries) - l2Index)
      let first = table[l2Index]

      if !Self.needsAllocation(first) {
        // QEMU's handle_copied: COPIED clusters at contiguous host offsets.
        let host = Int64(first & Qcow2Entry.offsetMask)
        if host & (clusterSize - 1) != 0 {
          throw corruption(
            "Data cluster offset \(Self.alternateHex(host)) unaligned (guest offset: \(Self.alternateHex(offset)))"
          )
        }
        var run = 1
        while run < clusters, !Self.needsAllocation(table[l2Index + run]),
          Int64(table[l2Index + run] & Qcow2Entry.offsetMask) == host + Int64(run) * clusterSize
        {
          run += 1
        }
        let bytes = min(Int64(iov.count), Int64(run) * clusterSize - inCluster)
        let entries = Array(table[l2Index..<l2Index + run])
        if entries.allSatisfy({ Qcow2Entry.type(of: $0) == .normal }) {
          try await checkOverlapBeforeWrite(node, offset: host + inCluster, size: bytes)
          return .inPlace(host: host + inCluster, bytes: bytes)
        }
        // Preallocated zero clusters become data: the parts of them the write
        // does not cover keep reading as zeroes.
        try await writeWithCOW(
          node, guestOffset: offset, host: host, clusters: run, data: iov.slice(0, Int(bytes)),
          head: Qcow2Entry.type(of: entries[0]) == .zeroAllocated,
          tail: Qcow2Entry.type(of: entries[run - 1]) == .zeroAllocated)
        // The data must be durable before the entries stop saying "zero".
        try await file.flush()
        try await writeL2Entries(
          node, l2Offset: l2Offset, first: l2Index,
          entries.map { ($0 & Qcow2Entry.offsetMask) | Qcow2Entry.copied })
        return .done(bytes, hostEnd: host + inCluster + bytes)
      }

      // QEMU's handle_alloc: clusters that need allocation, allocated together.
      var run = 1
      while run < clusters, Self.needsAllocation(table[l2Index + run]) { run += 1 }
      let refcounts = try refcountsForWrite()
      var host: Int64
      if let continuing, inCluster == 0, continuing & (clusterSize - 1) == 0,
        case let allocated = try await refcounts.allocate(
          at: continuing, clusters: Int64(run), file: file),
        allocated > 0
      {
        host = continuing
        run = Int(allocated)
      } else {
        host = try await refcounts.allocate(clusters: Int64(run), file: file)
      }
      let bytes = min(Int64(iov.count), Int64(run) * clusterSize - inCluster)
      // The refcounts must be on disk before an L2 entry points at the clusters.
      try await file.flush()
      try await writeWithCOW(
        node, guestOffset: offset, host: host, clusters: run, data: iov.slice(0, Int(bytes)),
        head: true, tail: true)
      // The data must be durable before an L2 entry points at it (QEMU's
      // qcow2_cache_depends_on_flush on the L2 cache).
      try await file.flush()
      let old = Array(table[l2Index..<l2Index + run])
      try await writeL2Entries(
        node, l2Offset: l2Offset, first: l2Index,
        (0..<run).map { UInt64(host + Int64($0) * clusterSize) | Qcow2Entry.copied })
      try await releaseClusters(node, oldEntries: old)
      return .done(bytes, hostEnd: host + inCluster + bytes)
    }
    switch plan {
    case .done(let bytes, let hostEnd):
      return (bytes, hostEnd)
    case .inPlace(let host, let bytes):
      try await file.write(at: host, from: iov.slice(0, Int(bytes)))
      return (bytes, host + bytes)
    }
  }

  /// Writes `data` at guest `guestOffset` into the `clusters` host clusters
  /// from `host`, completing the first (`head`) and last (`tail`) cluster
  /// with the guest's current contents there (QEMU's copy-on-write regions,
  /// read through the old mapping: backing file, zeroes or data), in one
  /// write. Call with the lock held.
  private func writeWithCOW(
    _ node: BlockNode, guestOffset: Int64, host: Int64, clusters: Int, data: IOVector,
    head: Bool, tail: Bool
  ) async throws {
    let clusterSize = header.clusterSize
    let start = guestOffset & ~(clusterSize - 1)
    let dataEnd = guestOffset + Int64(data.count)
    let headBytes = head ? guestOffset - start : 0
    let tailBytes = tail ? start + Int64(clusters) * clusterSize - dataEnd : 0
    var combined = IOVector()
    if headBytes > 0 {
      let buffer = IOVector(allocating: Int(headBytes))
      try await readGuest(node, offset: start, into: buffer)
      combined.append(buffer)
    }
    combined.append(data)
    if tailBytes > 0 {
      let buffer = IOVector(allocating: Int(tailBytes))
      try await readGuest(node, offset: dataEnd, into: buffer)
      combined.append(buffer)
    }
    let hostStart = host + (guestOffset - start - headBytes)
    try await checkOverlapBeforeWrite(node, offset: hostStart, size: Int64(combined.count))
    try await fileNode(node).write(at: hostStart, from: combined)
  }
}
