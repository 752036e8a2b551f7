/// The references counted per host cluster during a check (QEMU's in-memory
/// refcount table): 16 bits per cluster, larger counts kept aside, so that
/// huge (or hostile, grown) files cost what they cost QEMU.
struct Qcow2ReferenceCounts {
  private var small: [UInt16]
  private var large: [Int: UInt64] = [:]

  /// `count` clusters, all without references.
  init(count: Int) { small = [UInt16](repeating: 0, count: count) }

  /// Number of clusters counted (QEMU's `nb_clusters`).
  var count: Int { small.count }

  /// The references of cluster `index`.
  subscript(index: Int) -> UInt64 {
    get { small[index] == .max ? large[index] ?? 0 : UInt64(small[index]) }
    set {
      if newValue >= UInt64(UInt16.max) {
        small[index] = .max
        large[index] = newValue
      } else {
        small[index] = UInt16(newValue)
        large[index] = nil
      }
    }
  }

  /// The first cluster from `start` up to `end` (exclusive) with references,
  /// if any: a word-wise scan, so that the check skips the empty stretches
  /// of a huge (or hostile) file quickly.
  func firstReferenced(from start: Int, to end: Int) -> Int? {
    let end = min(end, small.count)
    guard start < end else { return nil }
    return small.withUnsafeBufferPointer { counters -> Int? in
      var index = start
      while index < end && index % 4 != 0 {
        if counters[index] != 0 { return index }
        index += 1
      }
      let raw = UnsafeRawBufferPointer(counters)
      while index + 4 <= end {
        if raw.loadUnaligned(fromByteOffset: index * 2, as: UInt64.self) != 0 { break }
        index += 4
      }
      while index < end {
        if counters[index] != 0 { return index }
        index += 1
      }
      return nil
    }
  }

  /// Grows the counted range to `count` clusters.
  mutating func grow(to count: Int) {
    if count > small.count { small += [UInt16](repeating: 0, count: count - small.count) }
  }

}
