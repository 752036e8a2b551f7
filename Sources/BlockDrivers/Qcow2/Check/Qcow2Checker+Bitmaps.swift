import BlockCore

/// Counting the clusters of persistent bitmaps (QEMU's
/// `qcow2_check_bitmaps_refcounts`): the bitmap directory, each bitmap's
/// table and the data clusters it points at. Bitmaps count only while the
/// bitmaps autoclear bit says they are consistent.
extension Qcow2Checker {
  /// Reserved bits of a bitmap table entry.
  static let bitmapEntryReservedMask: UInt64 = 0xFF00_0000_0000_01FE
  /// Bit 0 of a bitmap table entry: the cluster reads as all ones.
  static let bitmapEntryAllOnes: UInt64 = 1

  /// Adds the references of the bitmaps; an unreadable directory or table
  /// is a corruption (the directory's ends the check with EINVAL, as QEMU).
  func countBitmaps() async throws {
    guard header.version >= 3, header.autoclearFeatures & Qcow2Feature.bitmaps != 0,
      let ext = header.extensions.first(where: { $0.type == Qcow2HeaderExtension.bitmaps }),
      ext.data.count >= 24
    else { return }
    let count = Int(ext.data.uint32(at: 0))
    guard count > 0 else { return }
    let directorySize = Int64(bitPattern: ext.data.uint64(at: 8))
    let directoryOffset = Int64(bitPattern: ext.data.uint64(at: 16))
    try incrementReferences(offset: directoryOffset, size: directorySize)
    guard let tables = try await bitmapTables(count, at: directoryOffset, size: directorySize)
    else {
      result.corruptions += 1
      throw Abort(error: BlockError(.invalidArgument))
    }
    for (offset, size) in tables {
      try incrementReferences(offset: offset, size: Int64(size) * 8)
      guard
        offset & (clusterSize - 1) == 0, offset >= 0,
        offset <= file.length - Int64(size) * 8
      else {
        result.corruptions += 1
        break
      }
      let entries = try await file.read(at: offset, count: size * 8).bigEndianUInt64s(count: size)
      if entries.contains(where: { !isValidBitmapEntry($0) }) {
        result.corruptions += 1
        break
      }
      for entry in entries where entry & Qcow2Entry.offsetMask != 0 {
        try incrementReferences(offset: Int64(entry & Qcow2Entry.offsetMask), size: clusterSize)
      }
    }
  }

  /// The (offset, entries) of each bitmap's table, nil when the directory
  /// is unreadable.
  private func bitmapTables(_ count: Int, at offset: Int64, size: Int64) async throws
    -> [(Int64, Int)]?
  {
    guard offset >= 0, size > 0, size <= 64 << 20, offset <= file.length - size else {
      return nil
    }
    let directory = try await file.read(at: offset, count: Int(size))
    var tables: [(Int64, Int)] = []
    var position = 0
    for _ in 0..<count {
      guard position + 24 <= directory.count else { return nil }
      let tableOffset = Int64(bitPattern: directory.uint64(at: position))
      let tableSize = Int(directory.uint32(at: position + 8))
      let nameSize = Int(directory.bigEndian(at: position + 18, width: 2))
      let extraSize = Int(directory.uint32(at: position + 20))
      guard tableSize <= (1 << 22), extraSize <= 1 << 20 else { return nil }
      tables.append((tableOffset, tableSize))
      position += (24 + extraSize + nameSize + 7) & ~7
    }
    return position <= directory.count ? tables : nil
  }

  /// QEMU's `check_table_entry` for a bitmap table entry.
  private func isValidBitmapEntry(_ entry: UInt64) -> Bool {
    if entry & Self.bitmapEntryReservedMask != 0 { return false }
    let offset = entry & Qcow2Entry.offsetMask
    if offset != 0 {
      if entry & Self.bitmapEntryAllOnes != 0 { return false }
      if offset & UInt64(clusterSize - 1) != 0 { return false }
    }
    return true
  }
}
