/// The subcluster bitmap of an extended L2 entry (qcow2 spec, "Extended L2
/// Entries"): bit `n` says subcluster `n` is allocated, bit `32 + n` that it
/// reads as zeroes; both set is invalid.
enum Qcow2SubclusterBitmap {
  /// Every subcluster reads as zeroes, none allocated (QEMU's
  /// `QCOW_L2_BITMAP_ALL_ZEROES`).
  static let allZeroes: UInt64 = 0xFFFF_FFFF_0000_0000
  /// The allocation half.
  static let allAllocated: UInt64 = 0x0000_0000_FFFF_FFFF

  /// Allocation bits of subclusters `from ..< to`.
  static func allocated(_ from: Int, _ to: Int) -> UInt64 {
    to <= from ? 0 : ((UInt64(1) << UInt64(to - from)) - 1) << UInt64(from)
  }

  /// Zero bits of subclusters `from ..< to`.
  static func zeroes(_ from: Int, _ to: Int) -> UInt64 { allocated(from, to) << 32 }

  /// The type of subcluster `index` (QEMU's `qcow2_get_subcluster_type`);
  /// nil for an invalid entry.
  static func type(entry: UInt64, bitmap: UInt64, index: Int, dataFile: Bool)
    -> Qcow2ClusterType?
  {
    let allocatedBit = UInt64(1) << UInt64(index)
    let zeroBit = allocatedBit << 32
    switch Qcow2Entry.type(of: entry, dataFile: dataFile, extendedL2: true) {
    case .compressed:
      return .compressed
    case .normal:
      if (bitmap >> 32) & bitmap != 0 { return nil }
      if bitmap & zeroBit != 0 { return .zeroAllocated }
      return bitmap & allocatedBit != 0 ? .normal : .unallocatedAllocated
    default:
      if bitmap & allAllocated != 0 { return nil }
      return bitmap & zeroBit != 0 ? .zeroPlain : .unallocated
    }
  }

  /// The type of subcluster `from` and how many subclusters from it share
  /// that type within the cluster (QEMU's `qcow2_get_subcluster_range_type`);
  /// nil for an invalid entry. A compressed cluster counts as one run.
  static func run(entry: UInt64, bitmap: UInt64, from: Int, dataFile: Bool)
    -> (type: Qcow2ClusterType, count: Int)?
  {
    guard let type = type(entry: entry, bitmap: bitmap, index: from, dataFile: dataFile) else {
      return nil
    }
    let below = allocated(0, from)
    let end: Int
    switch type {
    case .normal:
      end = UInt32(truncatingIfNeeded: bitmap | below).trailingNonzeroBitCount
    case .zeroPlain, .zeroAllocated:
      end = UInt32(truncatingIfNeeded: (bitmap >> 32) | below).trailingNonzeroBitCount
    case .unallocated, .unallocatedAllocated:
      let set = UInt32(truncatingIfNeeded: ((bitmap >> 32) | bitmap) & ~below)
      end = set.trailingZeroBitCount
    case .compressed:
      end = 32
    }
    return (type, end - from)
  }
}

extension FixedWidthInteger {
  /// How many low-order bits are set before the first clear one.
  fileprivate var trailingNonzeroBitCount: Int { (~self).trailingZeroBitCount }
}
