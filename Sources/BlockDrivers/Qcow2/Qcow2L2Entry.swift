/// What a guest cluster is, from its L2 entry (QEMU's `QCow2ClusterType`).
public enum Qcow2ClusterType: Sendable, Equatable {
  /// No data here: reads come from the backing file, or zeroes.
  case unallocated
  /// Reads as zeroes, no host cluster (v3 zero flag, offset 0).
  case zeroPlain
  /// Reads as zeroes, with a preallocated host cluster.
  case zeroAllocated
  /// Data in a host cluster.
  case normal
  /// Deflated data somewhere in the file.
  case compressed
  /// Extended L2 entries only: a subcluster of a host cluster that was never
  /// written; reads fall through to the backing file, or read zeroes.
  case unallocatedAllocated

  /// Whether the entry holds references to host clusters (QEMU's
  /// `qcow2_cluster_is_allocated`).
  var hasHostCluster: Bool {
    self == .normal || self == .zeroAllocated || self == .compressed
      || self == .unallocatedAllocated
  }

  /// Whether the data of the run sits at a host offset of its own (block
  /// status OFFSET_VALID).
  var hasHostOffset: Bool {
    self == .normal || self == .zeroAllocated || self == .unallocatedAllocated
  }
}

/// Bit layout of L1 and standard (64-bit) L2 entries.
enum Qcow2Entry {
  /// Bits 9-55: the offset of an L2 table or a host cluster.
  static let offsetMask: UInt64 = 0x00FF_FFFF_FFFF_FE00
  /// Bit 63: the refcount is exactly one (writes may go in place).
  static let copied: UInt64 = 1 << 63
  /// Bit 62: the cluster is compressed.
  static let compressed: UInt64 = 1 << 62
  /// Bit 0: the cluster reads as zeroes (v3).
  static let zero: UInt64 = 1

  /// The type of a standard L2 entry (QEMU's `qcow2_get_cluster_type`). In
  /// an image with an external data file, host offset 0 is a real offset:
  /// there a COPIED entry with offset 0 is data, not unallocated.
  /// With extended L2 entries bit 0 is reserved: zeroes are in the bitmap.
  static func type(of entry: UInt64, dataFile: Bool = false, extendedL2: Bool = false)
    -> Qcow2ClusterType
  {
    if entry & compressed != 0 { return .compressed }
    if entry & zero != 0 && !extendedL2 {
      return entry & offsetMask != 0 ? .zeroAllocated : .zeroPlain
    }
    if entry & offsetMask != 0 || (dataFile && entry & copied != 0) { return .normal }
    return .unallocated
  }
}

/// Where a compressed cluster's deflated bytes are (qcow2 spec, "Compressed
/// Clusters Descriptor").
struct Qcow2CompressedDescriptor: Equatable {
  /// The host offset of the first compressed byte.
  let offset: Int64
  /// How many bytes to read: whole 512-byte sectors from the sector holding
  /// `offset`, less the part of that sector before it.
  let length: Int64

  /// Decodes an L2 entry of an image with `clusterBits`.
  init(entry: UInt64, clusterBits: UInt32) {
    let sizeShift = 62 - (UInt64(clusterBits) - 8)
    let sizeMask = (UInt64(1) << (UInt64(clusterBits) - 8)) - 1
    let offset = entry & ((UInt64(1) << sizeShift) - 1)
    let sectors = ((entry >> sizeShift) & sizeMask) + 1
    self.offset = Int64(offset)
    self.length = Int64(sectors * 512) - Int64(offset & 511)
  }
}
