/// Fast test of a byte range for all zeroes (QEMU's `buffer_is_zero`).
///
/// Reads eight 64-bit words per step and ORs them together, which the compiler
/// vectorises; only the unaligned head and tail are examined bytewise.
@inlinable
public func isAllZero(_ buffer: UnsafeRawBufferPointer) -> Bool {
  guard let base = buffer.baseAddress, buffer.count > 0 else { return true }
  var index = 0
  let count = buffer.count
  // Bytes up to an 8-byte boundary.
  let misalignment = Int(bitPattern: base) & 7
  if misalignment != 0 {
    let head = min(8 - misalignment, count)
    while index < head {
      if base.load(fromByteOffset: index, as: UInt8.self) != 0 { return false }
      index += 1
    }
  }
  // Blocks of 64 bytes.
  while index + 64 <= count {
    let p = (base + index).assumingMemoryBound(to: UInt64.self)
    let acc = p[0] | p[1] | p[2] | p[3] | p[4] | p[5] | p[6] | p[7]
    if acc != 0 { return false }
    index += 64
  }
  while index + 8 <= count {
    if base.load(fromByteOffset: index, as: UInt64.self) != 0 { return false }
    index += 8
  }
  while index < count {
    if base.load(fromByteOffset: index, as: UInt8.self) != 0 { return false }
    index += 1
  }
  return true
}
