/// A bitmap of ranges changed since it was created or cleared (QEMU's
/// `BdrvDirtyBitmap`), marked by every completed write, zero-write and discard.
///
/// One bit per `granularity` bytes, kept in 64-bit words that grow as far
/// as the highest dirty chunk: at the default 64 KiB granularity a whole
/// 1 TiB disk takes 2 MiB (16 Mi bits), at 4 KiB 32 MiB; a bitmap never
/// marked takes nothing. Marking, clearing and walking a range cost one
/// operation per word, not per chunk.
@BlockActor
public final class DirtyBitmap {
  /// The bitmap's name.
  public let name: String
  /// Bytes per bit (a power of two).
  public let granularity: Int64
  /// Whether marking is suspended.
  public var isEnabled = true
  /// Whether the bitmap is read-only (QEMU's `bdrv_dirty_bitmap_readonly`):
  /// its owner stored it and may not mark it, so the node it is attached to
  /// refuses writes, zero-writes and discards with EPERM until it is made
  /// writable again (a persistent bitmap of a qcow2 node reopened
  /// read-only).
  public var isReadOnly = false
  /// Bit `chunk % 64` of word `chunk / 64` is set when chunk `chunk` (the
  /// bytes from `chunk * granularity` on) is dirty.
  private var words: [UInt64] = []
  /// The number of set bits.
  private var setBits: Int64 = 0
  /// log2 of the granularity.
  private let shift: Int64

  /// Creates an empty bitmap.
  public init(name: String, granularity: Int64) {
    precondition(granularity > 0 && granularity & (granularity - 1) == 0)
    self.name = name
    self.granularity = granularity
    self.shift = Int64(granularity.trailingZeroBitCount)
  }

  /// Marks the chunks covering the range (nothing while disabled).
  public func mark(offset: Int64, bytes: Int64) {
    guard isEnabled else { return }
    set(offset: offset, bytes: bytes)
  }

  /// Marks the chunks covering the range even while the bitmap is disabled
  /// (QEMU's `bdrv_set_dirty_bitmap`, used to load and merge bitmaps).
  public func set(offset: Int64, bytes: Int64) {
    guard bytes > 0, offset >= 0 else { return }
    let first = offset >> shift
    let last = (offset + bytes - 1) >> shift
    let neededWords = Int(last >> 6) + 1
    if words.count < neededWords {
      words += [UInt64](repeating: 0, count: neededWords - words.count)
    }
    update(first: first, last: last) { $0 | $1 }
  }

  /// Clears the chunks the range covers entirely or partly (QEMU's
  /// `bdrv_reset_dirty_bitmap`, which callers align to the granularity).
  public func reset(offset: Int64, bytes: Int64) {
    guard bytes > 0, offset >= 0, !words.isEmpty else { return }
    let first = offset >> shift
    let last = min((offset + bytes - 1) >> shift, Int64(words.count) * 64 - 1)
    guard first <= last else { return }
    update(first: first, last: last) { $0 & ~$1 }
  }

  /// Applies `combine(word, mask)` to the words holding chunks
  /// `first...last`, keeping ``setBits`` current.
  private func update(first: Int64, last: Int64, _ combine: (UInt64, UInt64) -> UInt64) {
    var word = Int(first >> 6)
    let lastWord = Int(last >> 6)
    while word <= lastWord {
      let low = word == Int(first >> 6) ? Int(first & 63) : 0
      let high = word == lastWord ? Int(last & 63) : 63
      let mask =
        (high == 63 ? UInt64.max : (UInt64(1) << UInt64(high + 1)) - 1)
        & ~((UInt64(1) << UInt64(low)) - 1)
      let old = words[word]
      let new = combine(old, mask)
      setBits += Int64(new.nonzeroBitCount) - Int64(old.nonzeroBitCount)
      words[word] = new
      word += 1
    }
  }

  /// Whether the chunk containing `offset` is dirty.
  public func isDirty(_ offset: Int64) -> Bool {
    guard offset >= 0 else { return false }
    let chunk = offset >> shift
    let word = Int(chunk >> 6)
    return word < words.count && words[word] & (UInt64(1) << UInt64(chunk & 63)) != 0
  }

  /// Number of dirty bytes (chunks times granularity).
  public var dirtyBytes: Int64 { setBits * granularity }

  /// The dirty ranges, sorted and merged.
  public var dirtyRanges: [Range<Int64>] { dirtyRanges(in: 0..<Int64.max) }

  /// The parts of the dirty ranges inside `range`, sorted and merged (what
  /// an incremental backup copies).
  public func dirtyRanges(in range: Range<Int64>) -> [Range<Int64>] {
    var result: [Range<Int64>] = []
    guard !range.isEmpty, range.lowerBound >= 0, !words.isEmpty else { return result }
    let firstChunk = range.lowerBound >> shift
    let lastChunk = min((range.upperBound - 1) >> shift, Int64(words.count) * 64 - 1)
    var chunk = firstChunk
    while chunk <= lastChunk {
      guard let start = nextChunk(from: chunk, through: lastChunk, dirty: true) else { break }
      let end = nextChunk(from: start, through: lastChunk, dirty: false) ?? lastChunk + 1
      result.append(max(start << shift, range.lowerBound)..<min(end << shift, range.upperBound))
      chunk = end
    }
    return result
  }

  /// The first chunk from `chunk` through `last` whose bit is `dirty`, nil
  /// when there is none; skips whole words.
  private func nextChunk(from chunk: Int64, through last: Int64, dirty: Bool) -> Int64? {
    var word = Int(chunk >> 6)
    var bits = (dirty ? words[word] : ~words[word]) & ~((UInt64(1) << UInt64(chunk & 63)) - 1)
    while true {
      if bits != 0 {
        let found = Int64(word) << 6 + Int64(bits.trailingZeroBitCount)
        return found <= last ? found : nil
      }
      word += 1
      guard word < words.count, Int64(word) << 6 <= last else { return nil }
      bits = dirty ? words[word] : ~words[word]
    }
  }

  /// Marks every chunk dirty in `other` (QEMU's `bdrv_merge_dirty_bitmap`),
  /// whatever the two granularities and whether this bitmap is enabled.
  public func merge(_ other: DirtyBitmap) {
    for range in other.dirtyRanges {
      set(offset: range.lowerBound, bytes: range.upperBound - range.lowerBound)
    }
  }

  /// Clears every bit.
  public func clear() {
    words = []
    setBits = 0
  }
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

  /// Attaches an existing bitmap (such as a persistent bitmap loaded from
  /// the image) so that writes, zero-writes and discards mark it.
  public func attachDirtyBitmap(_ bitmap: DirtyBitmap) {
    guard !dirtyBitmaps.contains(where: { $0 === bitmap }) else { return }
    dirtyBitmaps.append(bitmap)
  }

  /// Removes a dirty bitmap.
  public func removeDirtyBitmap(_ bitmap: DirtyBitmap) {
    dirtyBitmaps.removeAll { $0 === bitmap }
  }

  /// Whether a bitmap attached to the node is read-only (QEMU's
  /// `bdrv_has_readonly_bitmaps`): writes and discards then fail.
  public var hasReadOnlyBitmaps: Bool { dirtyBitmaps.contains { $0.isReadOnly } }

  /// Fails a write or discard with EPERM while a bitmap is read-only, as
  /// QEMU's `bdrv_aligned_pwritev` and `bdrv_co_pdiscard` do.
  func checkBitmapsWritable() throws {
    if hasReadOnlyBitmaps { throw BlockError(.notPermitted) }
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
