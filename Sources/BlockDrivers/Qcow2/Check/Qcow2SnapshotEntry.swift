import BlockCore

/// An internal snapshot's table entry (qcow2 spec, "Snapshots"; QEMU's
/// `QCowSnapshot`): what the check, the downgrade and the snapshot
/// operations read and write.
struct Qcow2SnapshotEntry: Equatable {
  /// Where the snapshot's L1 table is.
  var l1TableOffset: UInt64
  /// Entries in the snapshot's L1 table.
  var l1Size: UInt32
  /// The snapshot's unique ID.
  var id: String
  /// The snapshot's name.
  var name: String
  /// The guest size when the snapshot was taken (the image's size when the
  /// entry does not record it).
  var diskSize: UInt64
  /// Bytes of saved VM state.
  var vmStateSize: UInt64
  /// The rest of the entry, kept so that the check can write the table
  /// again (QEMU's `QCowSnapshot`).
  var record = Record()

  /// The fields of an entry that only a rewrite of the table needs.
  struct Record: Equatable {
    /// When the snapshot was taken: seconds and nanoseconds.
    var dateSeconds: UInt32 = 0
    var dateNanoseconds: UInt32 = 0
    /// The guest clock at the snapshot, in nanoseconds.
    var vmClock: UInt64 = 0
    /// Bytes of extra data the entry declares (after a repair, what it keeps).
    var extraDataSize: UInt32 = 16
    /// The instruction count, all ones when the entry does not record it.
    var instructionCount: UInt64 = .max
    /// Extra data past the fields QEMU knows (beyond 24 bytes).
    var unknownExtraData: [UInt8] = []
  }

  /// Fixed part of a snapshot table entry.
  static let fixedLength = 40

  /// Reads the snapshot table of the image in `file`: the entries and the
  /// bytes the table occupies (QEMU's `s->snapshots_size`).
  @BlockActor static func readTable(_ file: BlockNode, header: Qcow2Header) async throws
    -> ([Qcow2SnapshotEntry], Int64)
  {
    guard header.snapshotCount > 0 else { return ([], 0) }
    var entries: [Qcow2SnapshotEntry] = []
    var offset = Int64(header.snapshotsOffset)
    for _ in 0..<header.snapshotCount {
      let fixed = try await file.read(at: offset, count: fixedLength)
      let idLength = Int(fixed.bigEndian(at: 12, width: 2))
      let nameLength = Int(fixed.bigEndian(at: 14, width: 2))
      let extraLength = Int(fixed.uint32(at: 36))
      let variable = extraLength + idLength + nameLength
      guard extraLength <= 1024 else {
        throw BlockError(.invalidArgument, "Snapshot table entry is invalid")
      }
      guard fixed.uint64(at: 0) < UInt64(1) << 56 else {
        throw BlockError(.invalidArgument, "Snapshot L1 table offset invalid")
      }
      let extra = try await file.read(at: offset + Int64(fixedLength), count: extraLength)
      let names = try await file.read(
        at: offset + Int64(fixedLength + extraLength), count: idLength + nameLength)
      var record = Record(
        dateSeconds: fixed.uint32(at: 16), dateNanoseconds: fixed.uint32(at: 20),
        vmClock: fixed.uint64(at: 24), extraDataSize: UInt32(extraLength))
      if extraLength >= 24 {
        record.instructionCount = extra.uint64(at: 16)
        record.unknownExtraData = Array(extra[24...])
      }
      entries.append(
        Qcow2SnapshotEntry(
          l1TableOffset: fixed.uint64(at: 0), l1Size: fixed.uint32(at: 8),
          id: String(decoding: names[0..<idLength], as: UTF8.self),
          name: String(decoding: names[idLength...], as: UTF8.self),
          diskSize: extraLength >= 16 ? extra.uint64(at: 8) : header.size,
          vmStateSize: extraLength >= 8 ? extra.uint64(at: 0) : UInt64(fixed.uint32(at: 32)),
          record: record))
      offset += Int64((fixedLength + variable + 7) & ~7)
    }
    return (entries, offset - Int64(header.snapshotsOffset))
  }
}
