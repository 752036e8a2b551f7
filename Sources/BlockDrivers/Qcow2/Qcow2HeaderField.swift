import BlockCore

/// The 64-bit header fields the driver rewrites in place, by their offsets in
/// the qcow2 header (docs/interop/qcow2.txt).
enum Qcow2HeaderField: Int64 {
  /// The virtual disk size.
  case size = 24
  /// The incompatible feature bits (dirty, corrupt, ...), version 3 only.
  case incompatibleFeatures = 72
  /// The autoclear feature bits, version 3 only.
  case autoclearFeatures = 88
}

extension BlockNode {
  /// Writes `value` big-endian into the header field `field` of the qcow2
  /// image this file holds (not flushed).
  func writeQcow2HeaderField(_ field: Qcow2HeaderField, _ value: UInt64) async throws {
    var bytes = [UInt8](repeating: 0, count: 8)
    bytes.setUInt64(value, at: 0)
    try await write(at: field.rawValue, bytes: bytes)
  }
}
