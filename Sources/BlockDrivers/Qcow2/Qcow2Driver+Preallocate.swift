import BlockCore

extension Qcow2Driver {
  /// Allocates the clusters of guest bytes `start ..< end` for a growing
  /// truncate or a create with `preallocation` (QEMU's `qcow2_co_truncate`):
  /// `metadata` maps them as a write would allocate them, without writing
  /// data, and extends the file to the last cluster (QEMU's
  /// `preallocate_co`); `falloc` and `full` lay out new refcount structures
  /// after the last used cluster, the data clusters right after them,
  /// allocate those in the file with the same mode (an error then is
  /// QEMU's "Failed to resize underlying file: ..."), then map them.
  func preallocate(
    _ node: BlockNode, from start: Int64, to end: Int64, mode: PreallocationMode
  ) async throws {
    switch mode {
    case .off:
      return
    case .metadata:
      try await preallocateMetadata(node, from: start, to: end)
    case .falloc, .full:
      try await preallocateData(node, from: start, to: end, mode: mode)
    }
  }

  /// QEMU's `preallocate_co`: run by run, as allocating writes place their
  /// clusters (L2 table first, data clusters contiguous with the previous
  /// run when free), then the file extended to the end of the last cluster.
  private func preallocateMetadata(_ node: BlockNode, from start: Int64, to end: Int64)
    async throws
  {
    let file = try fileNode(node)
    var offset = start
    var hostEnd: Int64?
    while offset < end {
      let run = try await lock.withLock {
        try await mapNewClusters(node, offset: offset, bytes: end - offset, continuing: hostEnd)
      }
      offset += run.bytes
      hostEnd = run.hostEnd
    }
    if let hostEnd, hostEnd > file.length {
      try await file.truncate(to: hostEnd, exact: false, preallocation: .off)
    }
  }

  /// Maps the clusters from guest `offset` (at most one L2 table's worth of
  /// `bytes`) to newly allocated host clusters without writing data; clusters
  /// already mapped COPIED are skipped. Returns the guest bytes covered and
  /// the host offset after the last cluster, and whether the clusters were
  /// newly allocated. Call with the lock held.
  private func mapNewClusters(
    _ node: BlockNode, offset: Int64, bytes: Int64, continuing: Int64?, host fixedHost: Int64? = nil
  ) async throws -> (bytes: Int64, hostEnd: Int64, allocated: Bool) {
    let file = try fileNode(node)
    let clusterSize = header.clusterSize
    let l2Offset = try await l2TableForWrite(node, offset: offset)
    let table = try await l2Table(node, at: l2Offset)
    let inCluster = offset & (clusterSize - 1)
    let l2Index = Int((offset >> Int64(header.clusterBits)) & (header.l2Entries - 1))
    let wanted = Int((inCluster + bytes + clusterSize - 1) / clusterSize)
    let clusters = min(wanted, Int(header.l2Entries) - l2Index)
    if fixedHost == nil && !needsAllocation(l2Entry(table, l2Index)) {
      var run = 1
      while run < clusters, !needsAllocation(l2Entry(table, l2Index + run)) { run += 1 }
      let host = Int64(l2Entry(table, l2Index + run - 1) & Qcow2Entry.offsetMask)
      return (min(bytes, Int64(run) * clusterSize - inCluster), host + clusterSize, false)
    }
    var run = fixedHost == nil ? 1 : clusters
    while run < clusters, needsAllocation(l2Entry(table, l2Index + run)) { run += 1 }
    var host: Int64
    if let fixedHost {
      host = fixedHost
    } else {
      let refcounts = try refcountsForWrite()
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
      // The refcounts must be on disk before an L2 entry points at the clusters.
      try await file.flush()
    }
    try await copyOnPreallocation(
      node, offset: offset, bytes: bytes, host: host, clusters: run,
      tail: fixedHost == nil)
    let old = (0..<run).map { l2Entry(table, l2Index + $0) }
    try await writeL2Entries(
      node, l2Offset: l2Offset, first: l2Index,
      (0..<run).map { UInt64(host + Int64($0) * clusterSize) | Qcow2Entry.copied })
    try await releaseClusters(node, oldEntries: old)
    let covered = min(bytes, Int64(run) * clusterSize - inCluster)
    return (covered, host + Int64(run) * clusterSize, true)
  }

  /// QEMU's falloc/full branch of `qcow2_co_truncate`: new refcount
  /// structures laid out after the last used cluster (QEMU's
  /// `qcow2_refcount_area`, sized for the data clusters plus their L2
  /// tables), the data clusters allocated right after them, the file grown
  /// over them with `mode`, then the L2 entries written.
  private func preallocateData(
    _ node: BlockNode, from start: Int64, to end: Int64, mode: PreallocationMode
  ) async throws {
    let file = try fileNode(node)
    try await lock.withLock {
      let refcounts = try refcountsForWrite()
      let clusterSize = header.clusterSize
      var lastCluster = (file.length + clusterSize - 1) / clusterSize - 1
      while lastCluster >= 0, try await refcounts.refcount(of: lastCluster, file: file) == 0 {
        lastCluster -= 1
      }
      let usedEnd = (lastCluster + 1) * clusterSize
      let firstCluster = start & ~(clusterSize - 1)
      let dataClusters = ((end + clusterSize - 1) & ~(clusterSize - 1) - firstCluster) / clusterSize
      let l2Tables = (dataClusters + header.l2Entries - 1) / header.l2Entries + 1
      let allocationStart = try await refcounts.refcountArea(
        start: usedEnd, additionalClusters: dataClusters + l2Tables, exact: true, newBlock: nil,
        file: file)
      let allocated = try await refcounts.allocate(
        at: allocationStart, clusters: dataClusters, file: file)
      guard allocated == dataClusters else {
        throw BlockError(.ioError, "qcow2: the preallocated area is not free")
      }
      try await file.flush()
      do {
        try await file.truncate(
          to: allocationStart + dataClusters * clusterSize, exact: false, preallocation: mode)
      } catch let error as BlockError {
        throw BlockError(error.code, "Failed to resize underlying file: \(error)")
      }
      var offset = start
      var host = allocationStart
      while offset < end {
        let run = try await mapNewClusters(
          node, offset: offset, bytes: end - offset, continuing: nil, host: host)
        offset += run.bytes
        host = run.hostEnd
      }
    }
  }

  /// QEMU's `perform_cow` as `qcow2_alloc_cluster_link_l2` runs it for
  /// preallocated clusters: the part of the first new cluster before
  /// `offset` gets the guest's current contents there, and (with `tail`) the
  /// part of the last one past the range gets zeroes. Call with the lock held.
  private func copyOnPreallocation(
    _ node: BlockNode, offset: Int64, bytes: Int64, host: Int64, clusters: Int, tail: Bool
  ) async throws {
    let file = try fileNode(node)
    let clusterSize = header.clusterSize
    let clusterStart = offset & ~(clusterSize - 1)
    let head = offset - clusterStart
    if head > 0 {
      let buffer = IOVector(allocating: Int(head))
      try await readGuest(node, offset: clusterStart, into: buffer)
      try await checkOverlapBeforeWrite(node, offset: host, size: head)
      try await file.write(at: host, from: buffer)
    }
    let runEnd = clusterStart + Int64(clusters) * clusterSize
    let tailBytes = runEnd - (offset + bytes)
    if tail && tailBytes > 0 {
      let tailHost = host + (offset + bytes - clusterStart)
      try await checkOverlapBeforeWrite(node, offset: tailHost, size: tailBytes)
      try await file.write(at: tailHost, bytes: [UInt8](repeating: 0, count: Int(tailBytes)))
    }
  }
}
