import BlockCore

extension Qcow2SnapshotEntry {
  /// Bytes of extra data QEMU 7.2 knows and always writes: the VM state
  /// size, the disk size and the instruction count
  /// (`QCowSnapshotExtraData`).
  static let knownExtraDataBytes = 24

  /// The entry as QEMU's `qcow2_write_snapshots` writes it: the fixed part,
  /// at least the known extra data (then any unknown extra data kept from
  /// the file), the ID and the name, unpadded (entries start 8-aligned).
  var encoded: [UInt8] {
    let id = Array(id.utf8)
    let name = Array(name.utf8)
    let extraSize = max(Self.knownExtraDataBytes, Int(record.extraDataSize))
    var bytes = [UInt8](repeating: 0, count: Self.fixedLength + extraSize + id.count + name.count)
    bytes.setUInt64(l1TableOffset, at: 0)
    bytes.setUInt32(l1Size, at: 8)
    bytes[12] = UInt8(id.count >> 8)
    bytes[13] = UInt8(id.count & 0xFF)
    bytes[14] = UInt8(name.count >> 8)
    bytes[15] = UInt8(name.count & 0xFF)
    bytes.setUInt32(record.dateSeconds, at: 16)
    bytes.setUInt32(record.dateNanoseconds, at: 20)
    bytes.setUInt64(record.vmClock, at: 24)
    // A VM state too large for the old field leaves it zero: older readers
    // then see a disk-only snapshot rather than a truncated state.
    if vmStateSize <= UInt64(UInt32.max) {
      bytes.setUInt32(UInt32(vmStateSize), at: 32)
    }
    bytes.setUInt32(UInt32(extraSize), at: 36)
    var position = Self.fixedLength
    bytes.setUInt64(vmStateSize, at: position)
    bytes.setUInt64(diskSize, at: position + 8)
    bytes.setUInt64(record.instructionCount, at: position + 16)
    position += Self.knownExtraDataBytes
    bytes.replaceSubrange(
      position..<position + record.unknownExtraData.count, with: record.unknownExtraData)
    position = Self.fixedLength + extraSize
    bytes.replaceSubrange(position..<position + id.count, with: id)
    bytes.replaceSubrange(position + id.count..<bytes.count, with: name)
    return bytes
  }

  /// The bytes a table of `entries` takes (QEMU's `snapshots_size`): each
  /// entry 8-aligned, the last one unpadded.
  static func tableBytes(_ entries: [Qcow2SnapshotEntry]) -> Int64 {
    entries.reduce(Int64(0)) { length, entry in
      ((length + 7) & ~7) + Int64(fixedLength)
        + Int64(max(knownExtraDataBytes, Int(entry.record.extraDataSize)))
        + Int64(entry.id.utf8.count + entry.name.utf8.count)
    }
  }
}
