/// One decoded L2 table (or the words of it), held by reference: the cache
/// and the code reading it share one copy, and an update changes the words
/// in place instead of copying the whole table (64 KiB at 64 KiB clusters)
/// for every entry it writes.
///
/// Only used on the driver's actor, under the metadata lock for changes.
final class Qcow2L2Table {
  /// The table's 64-bit words: entries, or entries and subcluster bitmaps
  /// alternating with extended L2 entries.
  private(set) var words: [UInt64]

  /// A table over decoded words.
  init(words: [UInt64]) { self.words = words }

  /// A zeroed table of `count` words.
  init(zeroedWords count: Int) { self.words = [UInt64](repeating: 0, count: count) }

  /// Number of words.
  var count: Int { words.count }

  /// Word `index`; setting it changes the table in place.
  subscript(index: Int) -> UInt64 {
    get { words[index] }
    set { words[index] = newValue }
  }
}
