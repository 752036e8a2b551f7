/// The refcount entries of one refcount block, of any width from 1 to 64 bits
/// (qcow2 spec, "Refcounts"): entries narrower than a byte are packed from the
/// least significant bit, wider ones are big-endian.
struct Qcow2RefcountBlock: Equatable {
  /// The entry width in bits (a power of two, 1 to 64).
  let bits: Int
  /// The block's bytes, one cluster.
  private(set) var bytes: [UInt8]

  /// A zeroed block of `clusterSize` bytes with `bits`-wide entries.
  init(clusterSize: Int, bits: Int) {
    self.init(bytes: [UInt8](repeating: 0, count: clusterSize), bits: bits)
  }

  /// A block over existing bytes.
  init(bytes: [UInt8], bits: Int) {
    precondition(bits > 0 && bits <= 64 && bits & (bits - 1) == 0, "refcount width")
    self.bits = bits
    self.bytes = bytes
  }

  /// Number of entries in the block.
  var count: Int { bytes.count * 8 / bits }

  /// The largest refcount an entry holds.
  var maxValue: UInt64 { bits == 64 ? .max : (1 << UInt64(bits)) - 1 }

  /// The refcount of entry `index`.
  subscript(index: Int) -> UInt64 {
    get {
      if bits < 8 {
        let bit = index * bits
        return UInt64(bytes[bit / 8] >> UInt8(bit % 8)) & maxValue
      }
      return bytes.bigEndian(at: index * bits / 8, width: bits / 8)
    }
    set {
      precondition(newValue <= maxValue, "refcount overflow")
      if bits < 8 {
        let bit = index * bits
        let shift = UInt8(bit % 8)
        let mask = UInt8(maxValue) << shift
        bytes[bit / 8] = bytes[bit / 8] & ~mask | UInt8(newValue) << shift
      } else {
        bytes.setBigEndian(newValue, at: index * bits / 8, width: bits / 8)
      }
    }
  }

  /// Puts back `saved` (bytes this block had) from byte `start` on: undoes
  /// a change that did not reach the file.
  mutating func restore(_ saved: [UInt8], at start: Int) {
    bytes.replaceSubrange(start..<start + saved.count, with: saved)
  }
}
