import BlockCore

/// What the overlap checks need from the snapshot table: its length and the
/// location of each snapshot's L1 table (QEMU's `qcow2_read_snapshots`,
/// without the names and extra data).
struct Qcow2SnapshotTable {
  /// A snapshot's L1 table in the file.
  struct L1Table: Equatable {
    /// Its host offset.
    var offset: Int64
    /// Its length in bytes.
    var bytes: Int64
  }

  /// QEMU's limit on the snapshot table (`QCOW_MAX_SNAPSHOTS_SIZE`).
  static let maxBytes: Int64 = 1024 * Int64(Qcow2Header.maxSnapshots)
  /// Bytes in an entry before its extra data, id and name.
  private static let fixedEntryBytes = 40

  /// The table's length in bytes.
  var size: Int64 = 0
  /// The snapshots' L1 tables, in table order.
  var l1Tables: [L1Table] = []

  /// Reads the `header.snapshotCount` entries at `header.snapshotsOffset`,
  /// in chunks, refusing a table longer than QEMU allows; past the end of
  /// the file it reads as zeroes.
  @BlockActor
  static func read(_ file: BlockNode, header: Qcow2Header) async throws -> Qcow2SnapshotTable {
    var table = Qcow2SnapshotTable()
    guard header.snapshotCount > 0 else { return table }
    let start = Int64(header.snapshotsOffset)
    var buffer: [UInt8] = []
    /// Makes `buffer` hold at least `count` bytes of the table.
    func need(_ count: Int) async throws {
      guard count > buffer.count else { return }
      if Int64(count) > maxBytes {
        throw BlockError(.fileTooLarge, "Snapshot table exceeds the size limit")
      }
      // Past the end of the file the table reads as zeroes, as QEMU's
      // reads do.
      let wanted = min(max(count, buffer.count * 2, 4096), Int(maxBytes))
      buffer += try await file.read(at: start + Int64(buffer.count), count: wanted - buffer.count)
    }
    var position = 0
    for _ in 0..<header.snapshotCount {
      position = (position + 7) & ~7
      try await need(position + fixedEntryBytes)
      let l1Offset = buffer.uint64(at: position)
      let l1Size = buffer.uint32(at: position + 8)
      let idBytes = Int(buffer[position + 12]) << 8 | Int(buffer[position + 13])
      let nameBytes = Int(buffer[position + 14]) << 8 | Int(buffer[position + 15])
      let extraBytes = Int(buffer.uint32(at: position + 36))
      position += fixedEntryBytes + extraBytes + idBytes + nameBytes
      if Int64(position) > maxBytes {
        throw BlockError(.fileTooLarge, "Snapshot table exceeds the size limit")
      }
      try await need(position)
      table.l1Tables.append(L1Table(offset: Int64(bitPattern: l1Offset), bytes: Int64(l1Size) * 8))
    }
    table.size = Int64(position)
    return table
  }
}
