import BlockCore

extension Qcow2BitmapInfo {
  /// The in-use flag of a directory entry (`BME_FLAG_IN_USE`).
  static let inUseFlag: UInt32 = 0x1
  /// The auto flag of a directory entry (`BME_FLAG_AUTO`).
  static let autoFlag: UInt32 = 0x2

  /// Bytes one directory entry takes (QEMU's `calc_dir_entry_size`): 24
  /// fixed bytes and the name, padded to 8.
  static func entryBytes(nameLength: Int) -> Int { (24 + nameLength + 7) & ~7 }

  /// The bitmap directory holding `bitmaps` in order, laid out as QEMU's
  /// `bitmap_list_store`: table offset and size, flags, type 1 (dirty
  /// tracking), granularity bits, name length, no extra data, the name,
  /// zero padding.
  static func directory(_ bitmaps: [Qcow2BitmapInfo]) -> [UInt8] {
    let size = bitmaps.reduce(0) { $0 + entryBytes(nameLength: $1.name.utf8.count) }
    var bytes = [UInt8](repeating: 0, count: size)
    var position = 0
    for bitmap in bitmaps {
      let name = Array(bitmap.name.utf8)
      bytes.setUInt64(bitmap.tableOffset, at: position)
      bytes.setUInt32(bitmap.tableEntries, at: position + 8)
      bytes.setUInt32(
        (bitmap.inUse ? inUseFlag : 0) | (bitmap.auto ? autoFlag : 0), at: position + 12)
      bytes[position + 16] = 1
      bytes[position + 17] = UInt8(bitmap.granularity.trailingZeroBitCount)
      bytes[position + 18] = UInt8(name.count >> 8)
      bytes[position + 19] = UInt8(name.count & 0xFF)
      bytes.replaceSubrange(position + 24..<position + 24 + name.count, with: name)
      position += entryBytes(nameLength: name.count)
    }
    return bytes
  }

  /// The bitmaps header extension's data: count, reserved, directory size
  /// and offset.
  static func extensionData(count: Int, directorySize: Int, offset: Int64) -> [UInt8] {
    var data = [UInt8](repeating: 0, count: 24)
    data.setUInt32(UInt32(count), at: 0)
    data.setUInt64(UInt64(directorySize), at: 8)
    data.setUInt64(UInt64(offset), at: 16)
    return data
  }
}
