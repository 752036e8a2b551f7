/// A set of byte offsets kept as sorted, disjoint, non-adjacent ranges.
public struct ExtentSet: Sendable, Equatable {
  /// The ranges, sorted and merged.
  public private(set) var ranges: [Range<Int64>] = []

  /// An empty set.
  public init() {}

  /// Index of the first range whose end is after `offset`.
  private func firstIndex(endingAfter offset: Int64) -> Int {
    var low = 0
    var high = ranges.count
    while low < high {
      let mid = (low + high) / 2
      if ranges[mid].upperBound <= offset { low = mid + 1 } else { high = mid }
    }
    return low
  }

  /// Adds a range.
  public mutating func insert(_ range: Range<Int64>) {
    guard !range.isEmpty else { return }
    var start = range.lowerBound
    var end = range.upperBound
    // Ranges touching or overlapping the new one merge with it.
    var index = firstIndex(endingAfter: start - 1)
    let first = index
    while index < ranges.count && ranges[index].lowerBound <= end {
      start = min(start, ranges[index].lowerBound)
      end = max(end, ranges[index].upperBound)
      index += 1
    }
    ranges.replaceSubrange(first..<index, with: [start..<end])
  }

  /// Removes a range.
  public mutating func remove(_ range: Range<Int64>) {
    guard !range.isEmpty else { return }
    var index = firstIndex(endingAfter: range.lowerBound)
    let first = index
    var replacement: [Range<Int64>] = []
    while index < ranges.count && ranges[index].lowerBound < range.upperBound {
      let existing = ranges[index]
      if existing.lowerBound < range.lowerBound {
        replacement.append(existing.lowerBound..<range.lowerBound)
      }
      if existing.upperBound > range.upperBound {
        replacement.append(range.upperBound..<existing.upperBound)
      }
      index += 1
    }
    ranges.replaceSubrange(first..<index, with: replacement)
  }

  /// Whether `offset` is in the set, and how far from `offset` (at most
  /// `limit` bytes) that answer holds.
  public func lookup(_ offset: Int64, limit: Int64) -> (contained: Bool, count: Int64) {
    let index = firstIndex(endingAfter: offset)
    guard index < ranges.count else { return (false, limit) }
    let range = ranges[index]
    if range.lowerBound <= offset {
      return (true, min(limit, range.upperBound - offset))
    }
    return (false, min(limit, range.lowerBound - offset))
  }

  /// Whether the whole range is in the set.
  public func contains(_ range: Range<Int64>) -> Bool {
    let (inside, count) = lookup(range.lowerBound, limit: range.count == 0 ? 1 : Int64(range.count))
    return inside && count >= Int64(range.count)
  }
}
