import BlockCore

extension Qcow2Driver {
  /// Grows the disk (QEMU's `qcow2_co_truncate`): a
  /// larger L1 table when the new size needs one (QEMU's
  /// `qcow2_grow_l1_table`: new table allocated, written and flushed, the
  /// header pointed at it, the old table freed), then the new size in the
  /// header, the new clusters allocated as `preallocation` asks (see
  /// ``preallocate(_:from:to:mode:)``) in between; shrinking in
  /// ``shrink(_:to:)``.
  public func truncate(
    _ node: BlockNode, to length: Int64, exact: Bool, preallocation: PreallocationMode
  ) async throws {
    if length % 512 != 0 {
      throw BlockError(.invalidArgument, "The new size must be a multiple of 512")
    }
    if header.snapshotCount > 0 && header.version < 3 {
      // Version 3 snapshots record their own disk size; version 2 ones do not.
      throw BlockError.notSupported("Can't resize a v2 image which has snapshots")
    }
    if length < Int64(header.size) {
      if preallocation != .off {
        throw BlockError(.invalidArgument, "Preallocation can't be used for shrinking an image")
      }
      try await shrink(node, to: length)
      return
    }
    let file = try fileNode(node)
    if hasDataFile {
      // QEMU grows the external data file with the disk.
      try await dataNode(node).truncate(to: length, exact: exact)
    }
    let oldSize = Int64(header.size)
    do {
      try await lock.withLock {
        try await growL1Table(node, to: Int(header.requiredL1Entries(for: UInt64(length))))
      }
    } catch let error as BlockError {
      throw BlockError(error.code, "Failed to grow the L1 table: \(error.codeDescription)")
    }
    try await preallocate(node, from: oldSize, to: length, mode: preallocation)
    if let backing = node.backing, length > oldSize, backing.length > oldSize {
      try await zeroGrownArea(node, from: oldSize, to: length)
    }
    try await lock.withLock {
      try await file.writeQcow2HeaderField(.size, UInt64(length))
      try await file.flush()
      header.size = UInt64(length)
      // QEMU then updates its cache sizes, which flushes the caches.
      try await writeBackMetadata(node)
    }
  }

  /// Zeroes the area a growing resize adds when the backing file is longer
  /// than the old size, so that its data does not show through (QEMU's
  /// `bdrv_co_truncate` asks for BDRV_REQ_ZERO_WRITE then, and
  /// `qcow2_co_truncate` does it): zero clusters from the first subcluster
  /// boundary on, then explicit zeroes for the unaligned head. A v2 image
  /// cannot record zero clusters: ENOTSUP, and the resize fails.
  private func zeroGrownArea(_ node: BlockNode, from oldSize: Int64, to newSize: Int64)
    async throws
  {
    let unit = header.subclusterSize
    let zeroStart = (oldSize + unit - 1) / unit * unit
    // The zero-write covers the new end of the image, which the zeroing
    // code recognises by the header's size.
    header.size = UInt64(newSize)
    defer { header.size = UInt64(oldSize) }
    if newSize > zeroStart {
      do {
        try await zeroClusters(node, offset: zeroStart, length: newSize - zeroStart, flags: [])
      } catch let error as BlockError {
        throw BlockError(error.code, "Failed to zero out new clusters: \(error.codeDescription)")
      }
    }
    if zeroStart > oldSize {
      let bytes = min(zeroStart, newSize) - oldSize
      let zeroes = IOVector(allocating: Int(bytes), zeroed: true)
      do {
        try await write(node, offset: oldSize, length: bytes, from: zeroes, flags: [])
      } catch let error as BlockError {
        throw BlockError(error.code, "Failed to zero out the new area: \(error.codeDescription)")
      }
    }
  }

  /// Grows the L1 table for a write beyond it (the VM state area), by half
  /// its size at a time like QEMU's `qcow2_grow_l1_table` without
  /// `exact_size`. Call with the lock held.
  func growL1Table(_ node: BlockNode, toAtLeast minimum: Int) async throws {
    var entries = max(1, l1Table.count)
    while entries < minimum { entries = (entries * 3 + 1) / 2 }
    try await growL1Table(node, to: entries)
  }

  private func growL1Table(_ node: BlockNode, to entries: Int) async throws {
    let file = try fileNode(node)
    guard entries > l1Table.count else { return }
    if UInt64(entries) > Qcow2Header.maxL1Bytes / 8 {
      throw BlockError(.fileTooLarge)
    }
    let refcounts = try refcountsForWrite()
    let clusterSize = header.clusterSize
    let clusters = (Int64(entries) * 8 + clusterSize - 1) / clusterSize
    try await file.emit(.l1GrowAllocTable)
    let newOffset = try await refcounts.allocate(clusters: clusters, file: file)
    // QEMU flushes its refcount cache here.
    try await refcounts.writeDeferred(file: file)
    try await file.flush()
    let table = l1Table + [UInt64](repeating: 0, count: entries - l1Table.count)
    var bytes = [UInt8](repeating: 0, count: entries * 8)
    for (index, entry) in table.enumerated() { bytes.setUInt64(entry, at: index * 8) }
    try await checkOverlapBeforeWrite(node, offset: newOffset, size: Int64(bytes.count))
    try await file.emit(.l1GrowWriteTable)
    try await file.write(at: newOffset, bytes: bytes)
    try await file.flush()
    var fields = [UInt8](repeating: 0, count: 12)
    fields.setUInt32(UInt32(entries), at: 0)
    fields.setUInt64(UInt64(newOffset), at: 4)
    try await file.emit(.l1GrowActivateTable)
    try await file.write(at: 36, bytes: fields)
    try await file.flush()
    let oldOffset = Int64(header.l1TableOffset)
    let oldSize = Int64(l1Table.count) * 8
    l1Table = table
    header.l1Size = UInt32(entries)
    header.l1TableOffset = UInt64(newOffset)
    if oldSize > 0 {
      for freed in try await refcounts.free(offset: oldOffset, bytes: oldSize, file: file) {
        l2Cache.remove(at: freed)
      }
    }
  }
}
