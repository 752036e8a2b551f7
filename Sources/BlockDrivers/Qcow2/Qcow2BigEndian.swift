/// Big-endian field access on byte arrays: every qcow2 structure on disk is
/// big-endian.
extension Array where Element == UInt8 {
  /// The big-endian unsigned integer of `width` bytes at `offset`; zero for
  /// bytes past the end (callers check lengths before trusting a field).
  func bigEndian(at offset: Int, width: Int) -> UInt64 {
    var value: UInt64 = 0
    for index in offset..<offset + width {
      value = value << 8 | UInt64(index < count ? self[index] : 0)
    }
    return value
  }

  /// The big-endian `UInt64` at `offset`.
  func uint64(at offset: Int) -> UInt64 { bigEndian(at: offset, width: 8) }
  /// The big-endian `UInt32` at `offset`.
  func uint32(at offset: Int) -> UInt32 { UInt32(bigEndian(at: offset, width: 4)) }

  /// Stores `value` big-endian in `width` bytes at `offset` (the array must be
  /// long enough).
  mutating func setBigEndian(_ value: UInt64, at offset: Int, width: Int) {
    for index in 0..<width {
      self[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(width - 1 - index)))
    }
  }

  /// Stores a big-endian `UInt64` at `offset`.
  mutating func setUInt64(_ value: UInt64, at offset: Int) {
    setBigEndian(value, at: offset, width: 8)
  }
  /// Stores a big-endian `UInt32` at `offset`.
  mutating func setUInt32(_ value: UInt32, at offset: Int) {
    setBigEndian(UInt64(value), at: offset, width: 4)
  }

  /// The first `count` big-endian `UInt64`s of the array (tables of entries).
  func bigEndianUInt64s(count: Int) -> [UInt64] {
    precondition(count * 8 <= self.count, "table larger than its bytes")
    return withUnsafeBytes { raw in
      (0..<count).map {
        UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self))
      }
    }
  }
}
