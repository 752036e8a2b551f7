import BlockCore

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

extension Qcow2SnapshotInfo {
  /// A snapshot to create: `name` and the VM's state at the time; an empty
  /// `id` lets the driver choose the next free numeric ID. The date
  /// defaults to now (microseconds, as QEMU's `g_get_real_time`).
  public init(
    id: String = "", name: String, vmStateSize: UInt64 = 0,
    date: (seconds: UInt32, nanoseconds: UInt32)? = nil,
    vmClockNanoseconds: UInt64 = 0, icount: UInt64? = 0
  ) {
    var now = timeval()
    gettimeofday(&now, nil)
    let date = date ?? (UInt32(truncatingIfNeeded: now.tv_sec), UInt32(now.tv_usec) * 1000)
    self.init(
      id: id, name: name, vmStateSize: vmStateSize, dateSeconds: date.seconds,
      dateNanoseconds: date.nanoseconds, vmClockNanoseconds: vmClockNanoseconds, icount: icount)
  }
}

/// Internal snapshots (QEMU's block/qcow2-snapshot.c). A snapshot is a copy
/// of the active L1 table plus one more reference on every cluster it
/// reaches; writes to shared clusters then copy them (the COPIED flags say
/// which clusters are not shared). Each operation keeps QEMU's order of
/// writes, so that a crash leaves the snapshot fully there or not at all
/// and at worst leaked clusters.
///
/// ```swift
/// let qcow2 = node.driver as! Qcow2Driver
/// let taken = try await qcow2.createSnapshot(node, Qcow2SnapshotInfo(name: "before-upgrade"))
/// // ... writes ...
/// try await qcow2.applySnapshot(node, idOrName: taken.id)   // roll back
/// try await qcow2.deleteSnapshot(node, id: taken.id, name: nil)
/// ```
extension Qcow2Driver {
  /// The snapshots in table order (`qemu-img snapshot -l`).
  public func snapshots(_ node: BlockNode) async throws -> [Qcow2SnapshotInfo] {
    try await lock.withLock {
      try await Qcow2SnapshotInfo.readAll(from: fileNode(node), header: header)
    }
  }

  /// QEMU's `qcow2_snapshot_create`: the active L1 table is copied to new
  /// clusters, every cluster it reaches gains a reference (COPIED flags
  /// cleared), and a new snapshot table with the entry appended replaces
  /// the old one. Returns the entry as written (with its ID). Fails with
  /// EFBIG at 65536 snapshots or when the table would exceed QEMU's size
  /// limit, EEXIST when the ID is taken, ENOTSUP with an external data file.
  @discardableResult
  public func createSnapshot(_ node: BlockNode, _ request: Qcow2SnapshotInfo) async throws
    -> Qcow2SnapshotInfo
  {
    try checkUsable()
    return try await node.drained {
      try await lock.withLock { try await createSnapshotLocked(node, request) }
    }
  }

  private func createSnapshotLocked(_ node: BlockNode, _ request: Qcow2SnapshotInfo) async throws
    -> Qcow2SnapshotInfo
  {
    let file = try fileNode(node)
    let refcounts = try refcountsForWrite()
    guard header.snapshotCount < Qcow2Header.maxSnapshots else { throw BlockError(.fileTooLarge) }
    var (entries, tableBytes) = try await snapshotEntries(node)
    if hasDataFile { throw BlockError(.notSupported) }
    var created = request
    if created.id.isEmpty { created.id = Self.newSnapshotID(entries) }
    if Self.snapshotIndex(entries, id: created.id, name: nil) != nil {
      throw BlockError(.fileExists)
    }
    // The active tables must be on disk as the cache has them before they
    // are copied.
    try await snapshotMetadataBarrier(node)
    let l1Bytes = Int64(l1Table.count) * 8
    let l1Offset =
      l1Bytes == 0
      ? 0
      : try await refcounts.allocate(
        clusters: (l1Bytes + header.clusterSize - 1) >> Int64(header.clusterBits), file: file)
    var copy = [UInt8](repeating: 0, count: Int(l1Bytes))
    for (index, entry) in l1Table.enumerated() { copy.setUInt64(entry, at: index * 8) }
    try await checkOverlapBeforeWrite(node, offset: l1Offset, size: l1Bytes)
    if l1Bytes > 0 { try await file.write(at: l1Offset, bytes: copy) }
    l1Table = try await updateSnapshotRefcounts(
      node, l1: l1Table, l1Offset: Int64(header.l1TableOffset), addend: 1)
    var entry = Qcow2SnapshotEntry(
      l1TableOffset: UInt64(l1Offset), l1Size: UInt32(l1Table.count), id: created.id,
      name: created.name, diskSize: header.size, vmStateSize: created.vmStateSize)
    entry.record = Qcow2SnapshotEntry.Record(
      dateSeconds: created.dateSeconds, dateNanoseconds: created.dateNanoseconds,
      vmClock: created.vmClockNanoseconds, extraDataSize: 24,
      instructionCount: created.icount ?? .max)
    entries.append(entry)
    try await writeSnapshotTable(node, entries, oldBytes: tableBytes)
    created.icount = entry.record.instructionCount == .max ? nil : entry.record.instructionCount
    if created.vmStateSize > 0 {
      // The VM state now lives in the snapshot; in the active table it
      // would only make the next snapshot's copies expensive.
      let start =
        Int64(header.requiredL1Entries(for: header.size))
        << (Int64(header.clusterBits) + header.l2Bits)
      let length = (Int64(created.vmStateSize) + header.clusterSize - 1) & ~(header.clusterSize - 1)
      let hasBacking = node.backing != nil
      let zero: Qcow2L2Slot =
        header.extendedL2
        ? (0, Qcow2SubclusterBitmap.allZeroes) : (header.version >= 3 ? Qcow2Entry.zero : 0, 0)
      try? await rewriteEntries(node, offset: start, length: length, discard: .never) { slot in
        let type = clusterType(slot.entry)
        let allocated = type == .normal || type == .zeroAllocated || type == .compressed
        return hasBacking || allocated ? zero : slot
      }
    }
    return created
  }

  /// The check of QEMU's `bdrv_snapshot_goto` before the driver's: a node
  /// with dirty bitmaps (its persistent bitmaps, inconsistent ones
  /// included, or any bitmap attached to it) cannot go back to a snapshot,
  /// which would leave them wrong: EBUSY "Device has active dirty
  /// bitmaps". ``applySnapshot(_:idOrName:)`` checks it first; a caller that
  /// reports the driver's errors differently (qemu-img) calls it before.
  public func checkNoDirtyBitmaps(_ node: BlockNode) throws {
    let persistent = trackedBitmaps.map { !$0.names.isEmpty } ?? false
    if persistent || !node.dirtyBitmaps.isEmpty {
      throw BlockError(.resourceBusy, "Device has active dirty bitmaps")
    }
  }

  /// QEMU's `qcow2_snapshot_goto` (`qemu-img snapshot -a`): the snapshot
  /// found by ID, else by name, becomes the active disk. Its clusters gain
  /// a reference first, then the active L1 table is overwritten with the
  /// snapshot's (flushed), then the clusters the old active table reached
  /// lose theirs (freed ones discarded as snapshot discards), then the
  /// COPIED flags are set again. A disk whose size differs from the
  /// snapshot's is resized to it first. ENOENT when there is no such
  /// snapshot.
  public func applySnapshot(_ node: BlockNode, idOrName: String) async throws {
    try checkUsable()
    try checkNoDirtyBitmaps(node)
    let entries = try await lock.withLock { try await snapshotEntries(node).0 }
    guard let index = Self.snapshotIndex(entries, idOrName: idOrName) else {
      throw BlockError(.noSuchFileOrDirectory)
    }
    if entries[index].diskSize != header.size {
      // The disk takes the snapshot's size first (QEMU truncates the same
      // way, which may shrink an image with snapshots).
      try await node.truncate(to: Int64(entries[index].diskSize), exact: true)
    }
    try await node.drained {
      try await lock.withLock { try await applySnapshotLocked(node, idOrName: idOrName) }
    }
  }

  private func applySnapshotLocked(_ node: BlockNode, idOrName: String) async throws {
    let file = try fileNode(node)
    _ = try refcountsForWrite()
    let (entries, _) = try await snapshotEntries(node)
    guard let index = Self.snapshotIndex(entries, idOrName: idOrName) else {
      throw BlockError(.noSuchFileOrDirectory)
    }
    let snapshot = entries[index]
    if snapshot.diskSize != header.size {
      throw BlockError(.notSupported, "qcow2: the disk was resized while loading a snapshot")
    }
    do {
      try validateSnapshotL1(snapshot)
    } catch let error as BlockError {
      // QEMU reports the table's problem, then fails with its errno.
      errorReport(error.message)
      throw BlockError(error.code)
    }
    if Int(snapshot.l1Size) > l1Table.count {
      try await growL1Table(node, toAtLeast: Int(snapshot.l1Size))
    }
    try await snapshotMetadataBarrier(node)
    let snapshotL1 = try await readSnapshotL1(node, snapshot, padTo: l1Table.count)
    _ = try await updateSnapshotRefcounts(
      node, l1: Array(snapshotL1.prefix(Int(snapshot.l1Size))),
      l1Offset: Int64(snapshot.l1TableOffset), addend: 1)
    // Every table the snapshot reaches is shared now: no COPIED flag in
    // the new active L1 table (QEMU writes the snapshot's stale flags and
    // clears them a step later).
    let newActive = snapshotL1.map { $0 & ~Qcow2Entry.copied }
    var bytes = [UInt8](repeating: 0, count: newActive.count * 8)
    for (index, entry) in newActive.enumerated() { bytes.setUInt64(entry, at: index * 8) }
    let activeOffset = Int64(header.l1TableOffset)
    try await checkOverlapBeforeWrite(
      node, offset: activeOffset, size: Int64(bytes.count), ignoring: .activeL1)
    try await file.emit(.l1Update)
    try await file.write(at: activeOffset, bytes: bytes)
    try await file.flush()
    let oldActive = l1Table
    l1Table = newActive
    _ = try await updateSnapshotRefcounts(node, l1: oldActive, l1Offset: nil, addend: -1)
    l1Table = try await updateSnapshotRefcounts(
      node, l1: l1Table, l1Offset: activeOffset, addend: 0)
  }

  /// QEMU's `qcow2_snapshot_delete`: the snapshot matching `id` and `name`
  /// (either may be nil) leaves the table first (a new table replaces the
  /// old), then the clusters it reached lose a reference and its L1 table
  /// is freed (freed clusters discarded as snapshot discards), then the
  /// active table's COPIED flags are set again. ENOENT ("Can't find the
  /// snapshot") when there is no such snapshot.
  public func deleteSnapshot(_ node: BlockNode, id: String?, name: String?) async throws {
    try checkUsable()
    try await node.drained {
      try await lock.withLock { try await deleteSnapshotLocked(node, id: id, name: name) }
    }
  }

  private func deleteSnapshotLocked(_ node: BlockNode, id: String?, name: String?) async throws {
    let file = try fileNode(node)
    let refcounts = try refcountsForWrite()
    var (entries, tableBytes) = try await snapshotEntries(node)
    guard let index = Self.snapshotIndex(entries, id: id, name: name) else {
      throw BlockError(.noSuchFileOrDirectory, "Can't find the snapshot")
    }
    let snapshot = entries.remove(at: index)
    try validateSnapshotL1(snapshot)
    let snapshotL1 = try await readSnapshotL1(node, snapshot)
    do {
      try await writeSnapshotTable(node, entries, oldBytes: tableBytes)
    } catch let error as BlockError {
      throw BlockError(error.code, "Failed to remove snapshot from snapshot list")
    }
    // The snapshot is gone; a failure from here on only leaks clusters.
    do {
      _ = try await updateSnapshotRefcounts(node, l1: snapshotL1, l1Offset: nil, addend: -1)
    } catch let error as BlockError {
      throw BlockError(error.code, "Failed to free the cluster and L1 table")
    }
    if snapshot.l1Size > 0,
      let freed = try? await refcounts.free(
        offset: Int64(snapshot.l1TableOffset), bytes: Int64(snapshot.l1Size) * 8, file: file)
    {
      try await passDiscard(file, freed: freed, type: .snapshot)
    }
    do {
      l1Table = try await updateSnapshotRefcounts(
        node, l1: l1Table, l1Offset: Int64(header.l1TableOffset), addend: 0)
    } catch let error as BlockError {
      throw BlockError(error.code, "Failed to update snapshot status in disk")
    }
  }

  /// QEMU's `qcow2_snapshot_load_tmp` (`qemu-img convert -l`): a read-only
  /// node reads the snapshot matching `id` and `name` from now on (its L1
  /// table replaces the active one in memory; nothing is written). ENOENT
  /// ("Can't find snapshot") when there is none.
  public func loadSnapshotReadOnly(_ node: BlockNode, id: String?, name: String?) async throws {
    try checkUsable()
    guard refcounts == nil else {
      throw BlockError(.invalidArgument, "The node must be read-only to load a snapshot")
    }
    try await lock.withLock {
      let (entries, _) = try await snapshotEntries(node)
      guard let index = Self.snapshotIndex(entries, id: id, name: name) else {
        throw BlockError(.noSuchFileOrDirectory, "Can't find snapshot")
      }
      let snapshot = entries[index]
      let table = try await readSnapshotL1(node, snapshot)
      l1Table = table
      header.l1TableOffset = snapshot.l1TableOffset
      header.l1Size = snapshot.l1Size
    }
  }
}
