import BlockCore

/// Why clusters are being freed (QEMU's `enum qcow2_discard_type`), which
/// decides whether the freed range is also discarded in the file.
enum Qcow2DiscardType {
  /// Never passed down (clusters replaced by a write).
  case never
  /// Always passed down (clusters cut off by a shrink).
  case always
  /// A discard or unmapping zero-write from the guest.
  case request
  /// A snapshot was deleted.
  case snapshot
  /// Any other metadata change.
  case other
}

/// Which kinds of freed clusters are discarded in the file (QEMU's
/// `pass-discard-request`, `pass-discard-snapshot`, `pass-discard-other`).
struct Qcow2DiscardPassthrough: Equatable {
  /// `pass-discard-request`: on when the node itself unmaps on discard.
  var request = false
  /// `pass-discard-snapshot` (on by default).
  var snapshot = true
  /// `pass-discard-other` (off by default).
  var other = false

  /// Whether clusters freed for `type` are discarded in the file.
  func passes(_ type: Qcow2DiscardType) -> Bool {
    switch type {
    case .never: return false
    case .always: return true
    case .request: return request
    case .snapshot: return snapshot
    case .other: return other
    }
  }
}

extension Qcow2Driver {
  /// Discards the freed clusters at `freed` in the file when the policy lets
  /// `type` through (QEMU's discard queue, `qcow2_process_discards`), merging
  /// adjacent clusters. Discards are advisory: failures are ignored.
  func passDiscard(_ file: BlockNode, freed: [Int64], type: Qcow2DiscardType) async throws {
    guard safety.discardPassthrough.passes(type), !freed.isEmpty else { return }
    let clusterSize = header.clusterSize
    var ranges: [(start: Int64, length: Int64)] = []
    for offset in freed.sorted() {
      if let last = ranges.last, last.start + last.length == offset {
        ranges[ranges.count - 1].length += clusterSize
      } else {
        ranges.append((offset, clusterSize))
      }
    }
    for range in ranges {
      try? await file.discard(at: range.start, count: range.length)
    }
  }
}
