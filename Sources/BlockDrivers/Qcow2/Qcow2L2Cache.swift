/// A bounded cache of decoded L2 tables, keyed by their host offset, evicting
/// the least recently used clean table (QEMU's L2 `Qcow2Cache`).
///
/// Tables are shared by reference (``Qcow2L2Table``): the driver changes a
/// cached table in place, under its metadata lock. A table changed but not
/// yet written is *dirty* (QEMU's `qcow2_cache_entry_mark_dirty`): it is
/// never evicted nor cleaned away; the driver writes it back (see
/// `Qcow2Driver.writeBackL2Tables(_:)`) before the dirty tables would fill
/// the cache.
struct Qcow2L2Cache {
  /// How many tables the cache holds at most.
  let capacity: Int
  private var tables: [Int64: Qcow2L2Table] = [:]
  private var lastUse: [Int64: UInt64] = [:]
  private var clock: UInt64 = 0
  /// Offsets of the cached tables whose changes are not in the file yet.
  private(set) var dirtyOffsets: Set<Int64> = []

  /// A cache for at most `capacity` tables (at least one).
  init(capacity: Int) { self.capacity = max(1, capacity) }

  /// The table at `offset`, if cached; marks it recently used.
  mutating func table(at offset: Int64) -> Qcow2L2Table? {
    guard let table = tables[offset] else { return nil }
    clock += 1
    lastUse[offset] = clock
    return table
  }

  /// Caches `table` at `offset`, evicting the least recently used clean
  /// table when full.
  mutating func insert(_ table: Qcow2L2Table, at offset: Int64) {
    if tables[offset] == nil, tables.count >= capacity,
      let victim = lastUse.filter({ !dirtyOffsets.contains($0.key) })
        .min(by: { $0.value < $1.value })?.key
    {
      tables[victim] = nil
      lastUse[victim] = nil
    }
    clock += 1
    tables[offset] = table
    lastUse[offset] = clock
  }

  /// Forgets the table at `offset` (its cluster was freed): unwritten
  /// changes of a freed table are dropped, as QEMU's `qcow2_cache_discard`.
  mutating func remove(at offset: Int64) {
    tables[offset] = nil
    lastUse[offset] = nil
    dirtyOffsets.remove(offset)
  }

  /// Records that the cached table at `offset` changed and must be written
  /// back; does nothing for a table not in the cache.
  mutating func markDirty(_ offset: Int64) {
    guard tables[offset] != nil else { return }
    dirtyOffsets.insert(offset)
  }

  /// Records that the table at `offset` is in the file as cached.
  mutating func markClean(_ offset: Int64) {
    dirtyOffsets.remove(offset)
  }

  /// The cached table at `offset` without marking it used (write-back).
  func peek(at offset: Int64) -> Qcow2L2Table? { tables[offset] }

  /// Number of cached tables.
  var count: Int { tables.count }

  /// The use clock: it advances on every lookup hit and insertion.
  var useClock: UInt64 { clock }

  /// Forgets the clean tables not used since the use clock read `mark`
  /// (QEMU's `qcow2_cache_clean_unused`, which skips dirty entries).
  mutating func dropUnused(since mark: UInt64, keeping kept: Set<Int64> = []) {
    for (offset, used) in lastUse
    where used <= mark && !kept.contains(offset) && !dirtyOffsets.contains(offset) {
      tables[offset] = nil
      lastUse[offset] = nil
    }
  }
}
