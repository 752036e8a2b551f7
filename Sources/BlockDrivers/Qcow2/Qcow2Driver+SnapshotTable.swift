import BlockCore

extension Qcow2Driver {
  /// The snapshot table as the file holds it, with the bytes it takes.
  /// Call with the lock held.
  func snapshotEntries(_ node: BlockNode) async throws -> ([Qcow2SnapshotEntry], Int64) {
    try await Qcow2SnapshotEntry.readTable(fileNode(node), header: header)
  }

  /// QEMU's `qcow2_write_snapshots`: `entries` go to newly allocated
  /// clusters; once they and their refcounts are on disk (a flush), the
  /// header's snapshot count and table offset are replaced in one write
  /// (flushed), and only then is the old table (`oldBytes` at the header's
  /// old offset) freed, discarded as a snapshot discard. A crash leaves the
  /// old table or the new one, and at worst leaked clusters. Call with the
  /// lock held.
  func writeSnapshotTable(_ node: BlockNode, _ entries: [Qcow2SnapshotEntry], oldBytes: Int64)
    async throws
  {
    let file = try fileNode(node)
    let refcounts = try refcountsForWrite()
    let length = Qcow2SnapshotEntry.tableBytes(entries)
    if length > Qcow2SnapshotTable.maxBytes { throw BlockError(.fileTooLarge) }
    var newOffset: Int64 = 0
    if length > 0 {
      newOffset = try await refcounts.allocate(
        clusters: (length + header.clusterSize - 1) >> Int64(header.clusterBits), file: file)
    }
    do {
      try await snapshotMetadataBarrier(node)
      try await checkOverlapBeforeWrite(node, offset: newOffset, size: length)
      var table = [UInt8](repeating: 0, count: Int(length))
      var position = 0
      for entry in entries {
        position = (position + 7) & ~7
        let bytes = entry.encoded
        table.replaceSubrange(position..<position + bytes.count, with: bytes)
        position += bytes.count
      }
      if length > 0 { try await file.write(at: newOffset, bytes: table) }
      try await snapshotMetadataBarrier(node)
      var fields = [UInt8](repeating: 0, count: 12)
      fields.setUInt32(UInt32(entries.count), at: 0)
      fields.setUInt64(UInt64(newOffset), at: 4)
      try await file.write(at: 60, bytes: fields)
      try await file.flush()
    } catch {
      if length > 0 {
        let freed = try? await refcounts.free(offset: newOffset, bytes: length, file: file)
        try? await passDiscard(file, freed: freed ?? [], type: .always)
      }
      throw error
    }
    let oldOffset = Int64(header.snapshotsOffset)
    header.snapshotCount = UInt32(entries.count)
    header.snapshotsOffset = UInt64(newOffset)
    safety.snapshotTableSize = length
    safety.inactiveL1Tables = entries.map {
      Qcow2SnapshotTable.L1Table(offset: Int64($0.l1TableOffset), bytes: Int64($0.l1Size) * 8)
    }
    // As QEMU's qcow2_free_clusters: a failure to free only leaks.
    if oldBytes > 0,
      let freed = try? await refcounts.free(offset: oldOffset, bytes: oldBytes, file: file)
    {
      try await passDiscard(file, freed: freed, type: .snapshot)
    }
  }

  /// What must be on disk before a table that depends on it is written
  /// (QEMU's `bdrv_flush` of the node in the snapshot code): the metadata
  /// caches' dirty tables (``flushCachesForClose(_:)``, the one entry point
  /// that writes them), then a flush of the file.
  func snapshotMetadataBarrier(_ node: BlockNode) async throws {
    guard await flushCachesForClose(node) else { throw BlockError(.ioError) }
    try await fileNode(node).flush()
  }

  /// QEMU's `find_new_snapshot_id`: one more than the largest ID read as a
  /// number (`strtoul`: leading digits, 0 when there are none).
  static func newSnapshotID(_ entries: [Qcow2SnapshotEntry]) -> String {
    let largest =
      entries.map { entry -> UInt64 in
        let text = entry.id.drop { $0 == " " || $0 == "\t" || $0 == "\n" }
        let digits = text.prefix { $0.isASCII && $0.isNumber }
        return UInt64(digits) ?? (digits.isEmpty ? 0 : .max)
      }.max() ?? 0
    return String(largest &+ 1)
  }

  /// QEMU's `find_snapshot_by_id_and_name`: with both, the entry matching
  /// both; with one, the first entry matching it.
  static func snapshotIndex(_ entries: [Qcow2SnapshotEntry], id: String?, name: String?) -> Int? {
    switch (id, name) {
    case (let id?, let name?): entries.firstIndex { $0.id == id && $0.name == name }
    case (let id?, nil): entries.firstIndex { $0.id == id }
    case (nil, let name?): entries.firstIndex { $0.name == name }
    case (nil, nil): nil
    }
  }

  /// QEMU's `find_snapshot_by_id_or_name`: by ID first, then by name.
  static func snapshotIndex(_ entries: [Qcow2SnapshotEntry], idOrName: String) -> Int? {
    snapshotIndex(entries, id: idOrName, name: nil)
      ?? snapshotIndex(entries, id: nil, name: idOrName)
  }

  /// QEMU's `qcow2_validate_table` for a snapshot's L1 table: not larger
  /// than an L1 table may be, cluster-aligned, within the file's range.
  func validateSnapshotL1(_ entry: Qcow2SnapshotEntry) throws {
    if UInt64(entry.l1Size) > Qcow2Header.maxL1Bytes / 8 {
      throw BlockError(.fileTooLarge, "Snapshot L1 table too large")
    }
    let offset = entry.l1TableOffset
    if offset & UInt64(header.clusterSize - 1) != 0
      || offset > UInt64(Int64.max) - UInt64(entry.l1Size) * 8
    {
      throw BlockError(.invalidArgument, "Snapshot L1 table offset invalid")
    }
  }

  /// The snapshot's L1 table, decoded, padded with zeroes to `minimum`
  /// entries.
  func readSnapshotL1(_ node: BlockNode, _ entry: Qcow2SnapshotEntry, padTo minimum: Int = 0)
    async throws -> [UInt64]
  {
    try validateSnapshotL1(entry)
    let count = Int(entry.l1Size)
    var table =
      count == 0
      ? []
      : try await fileNode(node).read(at: Int64(entry.l1TableOffset), count: count * 8)
        .bigEndianUInt64s(count: count)
    if table.count < minimum { table += [UInt64](repeating: 0, count: minimum - table.count) }
    return table
  }
}
