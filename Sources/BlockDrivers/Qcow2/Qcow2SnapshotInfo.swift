import BlockCore

/// An internal snapshot as `qemu-img info` lists it (QEMU's
/// `QEMUSnapshotInfo`, read by `qcow2_read_snapshots`).
public struct Qcow2SnapshotInfo: Sendable, Equatable {
  /// The snapshot's unique ID.
  public var id: String
  /// The snapshot's name (tag).
  public var name: String
  /// Bytes of saved VM state.
  public var vmStateSize: UInt64
  /// Seconds since the epoch when the snapshot was taken.
  public var dateSeconds: UInt32
  /// Nanoseconds part of the date.
  public var dateNanoseconds: UInt32
  /// The guest's VM clock when the snapshot was taken, in nanoseconds.
  public var vmClockNanoseconds: UInt64
  /// The instruction count, nil when the entry does not record one.
  public var icount: UInt64?

  /// Reads the snapshot table of the image in `file` (qcow2 spec,
  /// "Snapshots"); past the end of the file it reads as zeroes, as in QEMU.
  @BlockActor
  public static func readAll(from file: BlockNode, header: Qcow2Header) async throws
    -> [Qcow2SnapshotInfo]
  {
    var snapshots: [Qcow2SnapshotInfo] = []
    var offset = Int64(header.snapshotsOffset)
    for _ in 0..<header.snapshotCount {
      let fixed = try await file.read(at: offset, count: 40)
      let idLength = Int(fixed.bigEndian(at: 12, width: 2))
      let nameLength = Int(fixed.bigEndian(at: 14, width: 2))
      let extraLength = Int(fixed.uint32(at: 36))
      let variable = extraLength + idLength + nameLength
      guard extraLength <= 1024 else {
        throw BlockError(.invalidArgument, "Snapshot table entry is invalid")
      }
      let rest = try await file.read(at: offset + 40, count: variable)
      let extra = Array(rest[0..<extraLength])
      let names = rest[extraLength...]
      snapshots.append(
        Qcow2SnapshotInfo(
          id: String(decoding: names.prefix(idLength), as: UTF8.self),
          name: String(decoding: names.dropFirst(idLength), as: UTF8.self),
          vmStateSize: extraLength >= 8 ? extra.uint64(at: 0) : UInt64(fixed.uint32(at: 32)),
          dateSeconds: fixed.uint32(at: 16), dateNanoseconds: fixed.uint32(at: 20),
          vmClockNanoseconds: fixed.uint64(at: 24),
          icount: extraLength >= 24 ? extra.uint64(at: 16) : nil))
      offset += Int64((40 + variable + 7) & ~7)
    }
    return snapshots
  }
}
