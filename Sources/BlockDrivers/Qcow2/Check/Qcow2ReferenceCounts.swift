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

  /// Grows the counted range to `count` clusters.
  mutating func grow(to count: Int) {
    if count > small.count { small += [UInt16](repeating: 0, count: count - small.count) }
  }

}
