/// A bounded cache of decoded L2 tables, keyed by their host offset, evicting
/// the least recently used table (QEMU's L2 `Qcow2Cache`, read side).
///
/// Tables are shared by reference (``Qcow2L2Table``): the driver changes a
/// cached table in place, under its metadata lock, once the change is on
/// disk (or undoes it when the write fails).
struct Qcow2L2Cache {
  /// How many tables the cache holds at most.
  let capacity: Int
  private var tables: [Int64: Qcow2L2Table] = [:]
  private var lastUse: [Int64: UInt64] = [:]
  private var clock: UInt64 = 0

  /// A cache for at most `capacity` tables (at least one).
  init(capacity: Int) { self.capacity = max(1, capacity) }

  /// The table at `offset`, if cached; marks it recently used.
  mutating func table(at offset: Int64) -> Qcow2L2Table? {
    guard let table = tables[offset] else { return nil }
    clock += 1
    lastUse[offset] = clock
    return table
  }

  /// Caches `table` at `offset`, evicting the least recently used table when full.
  mutating func insert(_ table: Qcow2L2Table, at offset: Int64) {
    if tables[offset] == nil, tables.count >= capacity,
      let victim = lastUse.min(by: { $0.value < $1.value })?.key
    {
      tables[victim] = nil
      lastUse[victim] = nil
    }
    clock += 1
    tables[offset] = table
    lastUse[offset] = clock
  }

  /// Forgets the table at `offset` (its cluster was freed).
  mutating func remove(at offset: Int64) {
    tables[offset] = nil
    lastUse[offset] = nil
  }

  /// Number of cached tables.
  var count: Int { tables.count }

  /// The use clock: it advances on every lookup hit and insertion.
  var useClock: UInt64 { clock }

  /// Forgets the tables not used since the use clock read `mark` (QEMU's
  /// `qcow2_cache_clean_unused`).
  mutating func dropUnused(since mark: UInt64, keeping kept: Set<Int64> = []) {
    for (offset, used) in lastUse where used <= mark && !kept.contains(offset) {
      tables[offset] = nil
      lastUse[offset] = nil
    }
  }
}
