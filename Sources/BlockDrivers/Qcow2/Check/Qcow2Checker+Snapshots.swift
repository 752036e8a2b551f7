import BlockCore

/// The snapshot table's part of the check (QEMU's
/// `qcow2_check_read_snapshot_table` and `qcow2_check_fix_snapshot_table`):
/// the table is read leniently, entries QEMU cannot keep are discarded with
/// `-r all`, and a table with corruptions is written anew after the
/// refcounts are repaired. Its counts stay apart from the refcount check's
/// until ``mergeSnapshotCounts()``.
extension Qcow2Checker {
  /// QEMU's `QCOW_MAX_SNAPSHOT_EXTRA_DATA`.
  static let maxSnapshotExtraData: UInt32 = 1024
  /// Bytes of extra data QEMU knows (VM state size, disk size, icount).
  static let knownSnapshotExtraData = 24

  /// Reads the snapshot table into ``snapshots``, counting its corruptions;
  /// throws ``Qcow2Checker/Abort`` when it cannot be read.
  func readSnapshotTable() async throws {
    let repair = mode.contains(.fixErrors)
    var count = header.snapshotCount
    var discarded: Int64 = 0
    if count > Qcow2Header.maxSnapshots && repair {
      report("Discarding \(count - Qcow2Header.maxSnapshots) overhanging snapshots")
      discarded += Int64(count - Qcow2Header.maxSnapshots)
      count = Qcow2Header.maxSnapshots
    }
    var checked = header
    checked.snapshotCount = count
    do {
      try checked.validateSnapshotTable()
    } catch let error as BlockError {
      let tooLarge = count > Qcow2Header.maxSnapshots
      failSnapshotRead(
        "ERROR \(tooLarge ? "snapshot table too large" : "snapshot table offset invalid")")
      if tooLarge {
        report(
          "You can force-remove all \(count - Qcow2Header.maxSnapshots) overhanging snapshots with qemu-img check -r all"
        )
      }
      throw Abort(error: BlockError(tooLarge ? .fileTooLarge : error.code))
    }
    var extraDropped: Int64 = 0
    (snapshots, snapshotTableSize) = try await readSnapshotEntries(
      count: Int(count), repair: repair, discarded: &discarded, extraDropped: &extraDropped)
    snapshotCorruptions += discarded + extraDropped
    if discarded > 0 {
      var field = [UInt8](repeating: 0, count: 4)
      field.setUInt32(UInt32(snapshots.count), at: 0)
      do {
        try await file.write(at: 60, bytes: field)
        try await file.flush()
      } catch let error as BlockError {
        report(
          "ERROR failed to update the snapshot count in the image header: \(error.codeDescription)")
        result.checkErrors += 1
        throw Abort(error: error)
      }
      header.snapshotCount = UInt32(snapshots.count)
      snapshotCorruptionsFixed += discarded
      snapshotCorruptions -= discarded
    }
    if header.version >= 3 {
      for (index, snapshot) in snapshots.enumerated() where snapshot.record.extraDataSize < 16 {
        snapshotCorruptions += 1
        report("\(repair ? "Repairing" : "ERROR") snapshot table entry \(index) is incomplete")
      }
    }
  }

  /// Records a failure to read the table (an `error_report` line).
  private func failSnapshotRead(_ line: String) {
    result.checkErrors += 1
    reportError(line)
  }

  /// Reads `count` entries as QEMU's `qcow2_do_read_snapshots` does: reads
  /// past the end of the file give zeroes; with `repair`, too much extra
  /// data is cut and a table grown too big loses its remaining entries.
  private func readSnapshotEntries(
    count: Int, repair: Bool, discarded: inout Int64, extraDropped: inout Int64
  ) async throws -> ([Qcow2SnapshotEntry], Int64) {
    let start = Int64(header.snapshotsOffset)
    var entries: [Qcow2SnapshotEntry] = []
    var offset = start
    var tableLength: Int64 = 0
    for index in 0..<count {
      let entryStart = offset
      tableLength = (tableLength + 7) & ~7
      offset = (offset + 7) & ~7
      let fixed = try await readPadded(at: offset, count: Qcow2SnapshotEntry.fixedLength)
      offset += Int64(Qcow2SnapshotEntry.fixedLength)
      var record = Qcow2SnapshotEntry.Record(
        dateSeconds: fixed.uint32(at: 16), dateNanoseconds: fixed.uint32(at: 20),
        vmClock: fixed.uint64(at: 24), extraDataSize: fixed.uint32(at: 36))
      let idLength = Int(fixed.bigEndian(at: 12, width: 2))
      let nameLength = Int(fixed.bigEndian(at: 14, width: 2))
      var truncateExtra = false
      if record.extraDataSize > Self.maxSnapshotExtraData {
        if !repair {
          failSnapshotRead(
            "ERROR failed to read the snapshot table: Too much extra metadata in snapshot table entry \(index)"
          )
          report("You can force-remove this extra metadata with qemu-img check -r all")
          throw Abort(error: BlockError(.fileTooLarge))
        }
        report(
          "Discarding too much extra metadata in snapshot table entry \(index) (\(record.extraDataSize) > \(Self.maxSnapshotExtraData))"
        )
        extraDropped += 1
        truncateExtra = true
      }
      let known = min(Self.knownSnapshotExtraData, Int(record.extraDataSize))
      let extra = try await readPadded(at: offset, count: known)
      offset += Int64(known)
      var vmStateSize = UInt64(fixed.uint32(at: 32))
      var diskSize = header.size
      if known >= 8 { vmStateSize = extra.uint64(at: 0) }
      if known >= 16 { diskSize = extra.uint64(at: 8) }
      if known >= 24 { record.instructionCount = extra.uint64(at: 16) }
      if Int(record.extraDataSize) > Self.knownSnapshotExtraData {
        let end = offset + Int64(record.extraDataSize) - Int64(Self.knownSnapshotExtraData)
        if truncateExtra { record.extraDataSize = Self.maxSnapshotExtraData }
        record.unknownExtraData = try await readPadded(
          at: offset, count: Int(record.extraDataSize) - Self.knownSnapshotExtraData)
        offset = end
      }
      let names = try await readPadded(at: offset, count: idLength + nameLength)
      offset += Int64(idLength + nameLength)
      tableLength +=
        Int64(Qcow2SnapshotEntry.fixedLength) + Int64(record.extraDataSize) + Int64(idLength)
        + Int64(nameLength)
      if tableLength > Qcow2SnapshotTable.maxBytes || offset - start > Int64(Int32.max) {
        if !repair {
          failSnapshotRead("ERROR failed to read the snapshot table: Snapshot table is too big")
          report(
            "You can force-remove all \(count - index) overhanging snapshots with qemu-img check -r all"
          )
          throw Abort(error: BlockError(.fileTooLarge))
        }
        report(
          "Discarding \(count - index) overhanging snapshots (snapshot table is too big)")
        discarded += Int64(count - index)
        offset = entryStart
        break
      }
      entries.append(
        Qcow2SnapshotEntry(
          l1TableOffset: fixed.uint64(at: 0), l1Size: fixed.uint32(at: 8),
          id: Self.cString(names[0..<idLength]), name: Self.cString(names[idLength...]),
          diskSize: diskSize, vmStateSize: vmStateSize, record: record))
    }
    return (entries, offset - start)
  }

  /// Text up to the first NUL byte, as C's string functions see it.
  private static func cString(_ bytes: ArraySlice<UInt8>) -> String {
    String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
  }

  /// Writes the snapshot table anew when it had corruptions and errors may
  /// be fixed (QEMU's `qcow2_check_fix_snapshot_table`).
  func fixSnapshotTable() async throws {
    guard snapshotCorruptions > 0, mode.contains(.fixErrors) else { return }
    do {
      try await writeSnapshotTable()
    } catch let abort as Abort {
      throw abort
    } catch let error as BlockError {
      report("ERROR failed to update snapshot table: \(error.codeDescription)")
      result.checkErrors += 1
      throw Abort(error: error)
    }
    snapshotCorruptionsFixed += snapshotCorruptions
    snapshotCorruptions = 0
  }

  /// Adds the snapshot table's counts to the result (once).
  func mergeSnapshotCounts() {
    result.corruptions += snapshotCorruptions
    result.corruptionsFixed += snapshotCorruptionsFixed
    snapshotCorruptions = 0
    snapshotCorruptionsFixed = 0
  }

  /// QEMU's `qcow2_write_snapshots`: the entries in newly allocated
  /// clusters (each with at least the known extra data), then the header
  /// points at them, then the old table is freed.
  private func writeSnapshotTable() async throws {
    var length: Int64 = 0
    var placed: [(Int64, [UInt8])] = []
    for snapshot in snapshots {
      length = (length + 7) & ~7
      let bytes = snapshot.encoded
      placed.append((length, bytes))
      length += Int64(bytes.count)
      if length > Qcow2SnapshotTable.maxBytes { throw BlockError(.fileTooLarge) }
    }
    let refcounts = Qcow2Refcounts(header: header, table: storedTable)
    let newOffset = try await refcounts.allocate(clusters: clusters(length), file: file)
    storedTable = refcounts.table
    header.refcountTableOffset = UInt64(refcounts.tableOffset)
    header.refcountTableClusters = UInt32(clusters(Int64(refcounts.table.count) * 8))
    try await file.flush()
    if let overlapped = overlappedMetadata(offset: newOffset, size: length) {
      await signalCorruption("Preventing invalid write on metadata (overlaps with \(overlapped))")
      throw BlockError(.ioError)
    }
    for (position, bytes) in placed {
      try await file.write(at: newOffset + position, bytes: bytes)
    }
    try await file.flush()
    var field = [UInt8](repeating: 0, count: 12)
    field.setUInt32(UInt32(snapshots.count), at: 0)
    field.setUInt64(UInt64(newOffset), at: 4)
    try await file.write(at: 60, bytes: field)
    try await file.flush()
    let freed = try await refcounts.free(
      offset: Int64(header.snapshotsOffset), bytes: snapshotTableSize, file: file)
    if discardsFreedSnapshotTable {
      for cluster in freed { try? await file.discard(at: cluster, count: clusterSize) }
    }
    header.snapshotCount = UInt32(snapshots.count)
    header.snapshotsOffset = UInt64(newOffset)
    snapshotTableSize = length
  }
}
