import BlockCore

extension Qcow2Driver {
  /// Whether writing to a cluster with this L2 entry needs a new cluster
  /// (QEMU's `cluster_needs_new_alloc`): all but COPIED data clusters do.
  func needsAllocation(_ entry: UInt64) -> Bool {
    switch clusterType(entry) {
    case .normal, .zeroAllocated, .unallocatedAllocated: return entry & Qcow2Entry.copied == 0
    case .unallocated, .zeroPlain, .compressed: return true
    }
  }

  /// Writes one run of `iov` at guest `offset` (at most one L2 table's worth)
  /// and returns how many bytes it covered and the host offset right after
  /// them: in place for COPIED clusters, else into newly allocated clusters
  /// (QEMU's `qcow2_alloc_host_offset` and `qcow2_co_pwritev_task`). When the
  /// previous run of the same request ended at host `continuing`, new clusters
  /// go there if it is free, as QEMU's `qcow2_alloc_clusters_at` puts them.
  /// With extended L2 entries only the subclusters the write touches are
  /// completed (copy-on-write) and marked allocated.
  func writeRun(_ node: BlockNode, offset: Int64, iov: IOVector, continuing: Int64?)
    async throws -> (bytes: Int64, hostEnd: Int64)
  {
    let file = try fileNode(node)
    let data = try dataNode(node)
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
      let first = l2Entry(table, l2Index)

      if !needsAllocation(first) {
        // QEMU's handle_copied: COPIED clusters at contiguous host offsets.
        let host = Int64(first & Qcow2Entry.offsetMask)
        if host & (clusterSize - 1) != 0 {
          throw corruption(
            "Data cluster offset \(Self.alternateHex(host)) unaligned (guest offset: \(Self.alternateHex(offset)))"
          )
        }
        var run = 1
        while run < clusters, !needsAllocation(l2Entry(table, l2Index + run)),
          Int64(l2Entry(table, l2Index + run) & Qcow2Entry.offsetMask)
            == host + Int64(run) * clusterSize
        {
          run += 1
        }
        let bytes = min(Int64(iov.count), Int64(run) * clusterSize - inCluster)
        guard
          let cow = try keptClustersCOW(
            table, l2Index: l2Index, clusters: run, offset: offset, bytes: bytes)
        else {
          if !hasDataFile {
            try await checkOverlapBeforeWrite(node, offset: host + inCluster, size: bytes)
          }
          return .inPlace(host: host + inCluster, bytes: bytes)
        }
        // Preallocated zero (sub)clusters become data: the parts of them the
        // write does not cover keep reading as they did.
        try await writeWithCOW(
          node, guestOffset: offset, host: host, data: iov.slice(0, Int(bytes)),
          cowStart: cow.start, cowEnd: cow.end)
        // The data must be durable before the entries stop saying "zero".
        try await data.flush()
        let entries = (0..<run).map { l2Entry(table, l2Index + $0) }
        try await writeL2Entries(
          node, l2Offset: l2Offset, first: l2Index,
          entries.map { ($0 & Qcow2Entry.offsetMask) | Qcow2Entry.copied },
          bitmaps: writtenBitmaps(
            table, l2Index: l2Index, clusters: run, from: cow.start, to: cow.end))
        return .done(bytes, hostEnd: host + inCluster + bytes)
      }

      // QEMU's handle_alloc: clusters that need allocation, allocated together.
      var run = 1
      while run < clusters, needsAllocation(l2Entry(table, l2Index + run)) { run += 1 }
      let refcounts = try refcountsForWrite()
      var host: Int64
      if hasDataFile {
        // Data clusters of an external data file sit at their guest offset and
        // are not counted in the image's refcounts.
        host = offset - inCluster
      } else if let continuing, inCluster == 0, continuing & (clusterSize - 1) == 0,
        case let allocated = try await allocatingData(
          refcounts,
          {
            try await refcounts.allocate(at: continuing, clusters: Int64(run), file: file)
          }),
        allocated > 0
      {
        host = continuing
        run = Int(allocated)
      } else {
        host = try await allocatingData(refcounts) {
          try await refcounts.allocate(clusters: Int64(run), file: file)
        }
      }
      let bytes = min(Int64(iov.count), Int64(run) * clusterSize - inCluster)
      let cow = try newClustersCOW(
        table, l2Index: l2Index, clusters: run, offset: offset, bytes: bytes)
      let lazy = usesLazyRefcounts
      do {
        // With lazy refcounts the image is marked dirty before an L2 entry
        // may use the clusters.
        if lazy { try await refcountsReachedDisk(file) }
        try await writeWithCOW(
          node, guestOffset: offset, host: host, data: iov.slice(0, Int(bytes)),
          cowStart: cow.start, cowEnd: cow.end)
      } catch {
        // Nothing points at the new clusters yet: give them back (QEMU's
        // qcow2_alloc_cluster_abort); if that fails too they only leak.
        if !hasDataFile {
          _ = try? await refcounts.free(offset: host, bytes: Int64(run) * clusterSize, file: file)
        }
        throw error
      }
      // The new entries stay in the L2 cache (QEMU's
      // qcow2_alloc_cluster_link_l2): written back after the cached
      // refcounts of their clusters and a flush that also orders the data
      // before them, so that the write itself needs no flush.
      let old = (0..<run).map { l2Entry(table, l2Index + $0) }
      try await linkL2Entries(
        node, l2Offset: l2Offset, first: l2Index,
        (0..<run).map { UInt64(host + Int64($0) * clusterSize) | Qcow2Entry.copied },
        bitmaps: writtenBitmaps(
          table, l2Index: l2Index, clusters: run, from: cow.start, to: cow.end),
        dependsOnRefcounts: !lazy && !hasDataFile)
      try await releaseClusters(node, oldEntries: old)
      if !node.options.cache.writeCacheEnabled {
        // Writethrough: the flush that follows every write would write the
        // tables back at once; doing it here, before the lock is released,
        // keeps overlapping writers behind it as QEMU's flush holding
        // s->lock does.
        try await writeBackL2Tables(node)
      }
      return .done(bytes, hostEnd: host + inCluster + bytes)
    }
    switch plan {
    case .done(let bytes, let hostEnd):
      return (bytes, hostEnd)
    case .inPlace(let host, let bytes):
      try await file.emit(.writeAIO)
      try await data.write(at: host, from: iov.slice(0, Int(bytes)))
      return (bytes, host + bytes)
    }
  }

  /// Writes `data` at guest `guestOffset` into the host clusters from `host`
  /// (the host cluster of the guest cluster holding `guestOffset`), completing
  /// it with the guest's current contents from `cowStart` and up to `cowEnd`
  /// (QEMU's copy-on-write regions, read through the old mapping: backing
  /// file, zeroes or data), in one write; when the regions to copy read as
  /// zeroes, the range is zeroed cheaply instead (QEMU's
  /// `handle_alloc_space`). Call with the lock held.
  func writeWithCOW(
    _ node: BlockNode, guestOffset: Int64, host: Int64, data: IOVector, cowStart: Int64,
    cowEnd: Int64
  ) async throws {
    let clusterStart = guestOffset & ~(header.clusterSize - 1)
    let dataEnd = guestOffset + Int64(data.count)
    var combined = IOVector()
    let file = try fileNode(node)
    let target = try dataNode(node)
    let hostStart = host + (cowStart - clusterStart)
    let copies = cowStart < guestOffset || dataEnd < cowEnd
    if copies,
      try await zeroInsteadOfCOW(
        node, guestStart: cowStart, host: hostStart, span: cowEnd - cowStart,
        cowHead: guestOffset - cowStart, cowTail: cowEnd - dataEnd)
    {
      try await file.emit(.writeAIO)
      try await target.write(at: host + (guestOffset - clusterStart), from: data)
      return
    }
    if copies { try await file.emit(.cowRead) }
    if cowStart < guestOffset {
      let buffer = IOVector(allocating: Int(guestOffset - cowStart))
      try await readGuest(node, offset: cowStart, into: buffer)
      combined.append(buffer)
    }
    combined.append(data)
    if cowEnd > dataEnd {
      let buffer = IOVector(allocating: Int(cowEnd - dataEnd))
      try await readGuest(node, offset: dataEnd, into: buffer)
      combined.append(buffer)
    }
    if !hasDataFile {
      try await checkOverlapBeforeWrite(node, offset: hostStart, size: Int64(combined.count))
    }
    try await file.emit(.writeAIO)
    if copies { try await file.emit(.cowWrite) }
    try await target.write(at: hostStart, from: combined)
  }
}
