/// A bitmap of ranges changed since it was created or cleared (QEMU's
/// `BdrvDirtyBitmap`), marked by every completed write, zero-write and discard.
@BlockActor
public final class DirtyBitmap {
  /// The bitmap's name.
  public let name: String
  /// Bytes per bit (a power of two).
  public let granularity: Int64
  /// Whether marking is suspended.
  public var isEnabled = true
  private var bits = Set<Int64>()

  /// Creates an empty bitmap.
  public init(name: String, granularity: Int64) {
    precondition(granularity > 0 && granularity & (granularity - 1) == 0)
    self.name = name
    self.granularity = granularity
  }

  /// Marks the chunks covering the range.
  public func mark(offset: Int64, bytes: Int64) {
    guard isEnabled, bytes > 0 else { return }
    var chunk = offset / granularity
    let last = (offset + bytes - 1) / granularity
    while chunk <= last {
      bits.insert(chunk)
      chunk += 1
    }
  }

  /// Whether the chunk containing `offset` is dirty.
  public func isDirty(_ offset: Int64) -> Bool { bits.contains(offset / granularity) }

  /// Number of dirty bytes (chunks times granularity).
  public var dirtyBytes: Int64 { Int64(bits.count) * granularity }

  /// The dirty ranges, sorted and merged.
  public var dirtyRanges: [Range<Int64>] {
    var result: [Range<Int64>] = []
    for chunk in bits.sorted() {
      let range = chunk * granularity..<(chunk + 1) * granularity
      if let last = result.last, last.upperBound == range.lowerBound {
        result[result.count - 1] = last.lowerBound..<range.upperBound
      } else {
        result.append(range)
      }
    }
    return result
  }

  /// Clears every bit.
  public func clear() { bits.removeAll() }
}

/// A hook run before a write or discard reaches the driver; throwing fails the
/// request (used by backup jobs to copy old data first).
public typealias BeforeWriteHook =
  @BlockActor (
    _ node: BlockNode, _ offset: Int64, _ bytes: Int64, _ kind: TrackedRequestKind
  ) throws -> Void

extension BlockNode {
  /// Creates a dirty bitmap on this node.
  @discardableResult
  public func addDirtyBitmap(name: String, granularity: Int64 = 65536) -> DirtyBitmap {
    let bitmap = DirtyBitmap(name: name, granularity: granularity)
    dirtyBitmaps.append(bitmap)
    return bitmap
  }

  /// Removes a dirty bitmap.
  public func removeDirtyBitmap(_ bitmap: DirtyBitmap) {
    dirtyBitmaps.removeAll { $0 === bitmap }
  }

  func markDirty(offset: Int64, bytes: Int64) {
    for bitmap in dirtyBitmaps { bitmap.mark(offset: offset, bytes: bytes) }
  }

  /// Adds a before-write hook; returns a token for ``removeBeforeWriteHook(_:)``.
  @discardableResult
  public func addBeforeWriteHook(_ hook: @escaping BeforeWriteHook) -> Int {
    nextHookID += 1
    beforeWriteHooks.append((nextHookID, hook))
    return nextHookID
  }

  /// Removes a before-write hook.
  public func removeBeforeWriteHook(_ token: Int) {
    beforeWriteHooks.removeAll { $0.id == token }
  }

  func runBeforeWriteHooks(offset: Int64, bytes: Int64, kind: TrackedRequestKind) throws {
    for entry in beforeWriteHooks { try entry.hook(self, offset, bytes, kind) }
  }
}
