import BlockCore

/// Edits the persistent dirty bitmaps of a qcow2 image as `qemu-img bitmap`
/// does through QEMU's block layer (block/qcow2-bitmap.c): ``open(_:)``
/// loads every bitmap of the directory into memory (an in-use one, left by
/// a program that did not store it, stays empty and inconsistent) and, on
/// a writable node, marks the others in use on disk in place; the
/// operations then work on the bitmaps in memory (``remove(_:)`` also
/// drops the bitmap from the directory at once); ``store()`` writes every
/// consistent bitmap anew (data clusters, then its table), then a new
/// directory, the header, and frees the old directory and tables. The node
/// must have been opened with ``OpenContext/editsPersistentBitmaps`` and
/// takes no data writes meanwhile; a node opened writable otherwise has an
/// editor of its own that keeps the bitmaps current
/// (``Qcow2Driver/bitmapEditor(_:)``): the bitmaps it adds are attached to
/// the node, those it removes detached, and the node stores them at close.
///
/// ```swift
/// let editor = try await Qcow2BitmapEditor.open(node)
/// try editor.add("backup-0", granularity: nil, disabled: false)
/// try await editor.store()
/// ```
@BlockActor
public final class Qcow2BitmapEditor {
  /// A bitmap in memory: its data, or nil when inconsistent.
  struct Entry {
    var name: String
    var bitmap: DirtyBitmap?
  }

  let node: BlockNode
  let driver: Qcow2Driver
  /// Whether the consistent bitmaps are attached to the node, so that its
  /// writes mark them (the editor of a node opened writable for data).
  private let tracksWrites: Bool
  /// The bitmaps in the order QEMU creates them (the directory's, then new
  /// ones).
  var entries: [Entry] = []

  private init(node: BlockNode, driver: Qcow2Driver, tracksWrites: Bool) {
    self.node = node
    self.driver = driver
    self.tracksWrites = tracksWrites
  }

  /// Loads the bitmaps of a qcow2 node (QEMU's `qcow2_load_dirty_bitmaps`);
  /// ENOTSUP for a node of another format. On a writable node the bitmaps
  /// not in use are marked in use on disk: the header's bitmaps bit is
  /// cleared, the directory rewritten in place, then the bit set again.
  public static func open(_ node: BlockNode) async throws -> Qcow2BitmapEditor {
    try await open(node, tracksWrites: false)
  }

  /// Loads the bitmaps as ``open(_:)``; with `tracksWrites` the consistent
  /// ones (and those added later) are attached to the node.
  static func open(_ node: BlockNode, tracksWrites: Bool) async throws -> Qcow2BitmapEditor {
    guard let driver = node.driver as? Qcow2Driver else { throw BlockError(.notSupported) }
    let editor = Qcow2BitmapEditor(node: node, driver: driver, tracksWrites: tracksWrites)
    try await driver.lock.withLock { try await editor.load() }
    if tracksWrites {
      for bitmap in editor.consistentBitmaps { node.attachDirtyBitmap(bitmap) }
    }
    return editor
  }

  private func load() async throws {
    let file = try driver.fileNode(node)
    var directory = try await Qcow2BitmapInfo.readAll(from: file, header: driver.header)
    var needsUpdate = false
    for index in directory.indices {
      let info = directory[index]
      if info.inUse {
        entries.append(Entry(name: info.name, bitmap: nil))
      } else {
        entries.append(Entry(name: info.name, bitmap: try await driver.loadBitmapData(file, info)))
        directory[index].inUse = true
        needsUpdate = true
      }
    }
    guard needsUpdate, driver.refcounts != nil else { return }
    do {
      try await updateDirectoryInPlace(directory)
    } catch let error as BlockError {
      throw BlockError(error.code, "Can't update bitmap directory: \(error.codeDescription)")
    }
  }

  /// The bitmaps in memory that are not inconsistent.
  public var consistentBitmaps: [DirtyBitmap] { entries.compactMap(\.bitmap) }

  /// The names of the bitmaps in memory.
  public var names: [String] { entries.map(\.name) }

  /// The bitmap `name` for reading (QEMU's lookup with
  /// `BDRV_BITMAP_ALLOW_RO`): "not found", or "inconsistent".
  public func bitmap(_ name: String) throws -> DirtyBitmap {
    let index = try lookup(name)
    guard let bitmap = entries[index].bitmap else { throw inconsistent(name) }
    return bitmap
  }

  /// Whether the bitmap `name` is inconsistent (it was in use when the
  /// image was opened: its data is lost); "not found" when there is none.
  public func isInconsistent(_ name: String) throws -> Bool {
    entries[try lookup(name)].bitmap == nil
  }

  private func lookup(_ name: String) throws -> Int {
    guard let index = entries.firstIndex(where: { $0.name == name }) else {
      throw BlockError(.noSuchFileOrDirectory, "Dirty bitmap '\(name)' not found")
    }
    return index
  }

  /// The error for an inconsistent bitmap, with QEMU's hint on a line of
  /// its own.
  private func inconsistent(_ name: String) -> BlockError {
    BlockError(
      .invalidArgument,
      "Bitmap '\(name)' is inconsistent and cannot be used\n"
        + "Try block-dirty-bitmap-remove to delete this bitmap from disk")
  }

  /// The image's default granularity (QEMU's
  /// `bdrv_get_default_bitmap_granularity`): the cluster size within
  /// 4 KiB...64 KiB.
  private var defaultGranularity: Int64 {
    min(65536, max(4096, driver.header.clusterSize))
  }

  /// Adds a persistent bitmap (QEMU's `block_dirty_bitmap_add` with
  /// `persistent`): `granularity` as qemu-img passes it (a 32-bit number;
  /// nil or 0: the default), disabled when asked. QEMU's errors for an
  /// empty or taken name, a bad granularity, and what a qcow2 image cannot
  /// store (version 2, too large a bitmap, too long a name, too many
  /// bitmaps, a full directory).
  public func add(_ name: String, granularity: Int64?, disabled: Bool) throws {
    let chosen = try Self.checkNewBitmap(name, granularity: granularity) ?? defaultGranularity
    if entries.contains(where: { $0.name == name }) {
      throw BlockError(.invalidArgument, "Bitmap already exists: \(name)")
    }
    do {
      try checkCanStore(name, granularity: chosen)
    } catch let error as BlockError {
      throw BlockError(
        error.code, "Can't make bitmap '\(name)' persistent in '\(node.name)': \(error.message)")
    }
    let bitmap = DirtyBitmap(name: name, granularity: chosen)
    bitmap.isEnabled = !disabled
    entries.append(Entry(name: name, bitmap: bitmap))
    if tracksWrites { node.attachDirtyBitmap(bitmap) }
  }

  /// The first checks of QEMU's `block_dirty_bitmap_add`, whatever the
  /// format: a name, and a granularity (as qemu-img passes it, a 32-bit
  /// number) that is a power of two of at least 512. Returns the
  /// granularity, nil for the default (none or 0 given).
  public static func checkNewBitmap(_ name: String, granularity: Int64?) throws -> Int64? {
    guard !name.isEmpty else { throw BlockError(.invalidArgument, "Bitmap name cannot be empty") }
    guard let granularity, granularity != 0 else { return nil }
    let passed = Int64(UInt32(truncatingIfNeeded: granularity))
    guard passed >= 512, passed & (passed - 1) == 0 else {
      throw BlockError(.invalidArgument, "Granularity must be power of 2 and at least 512")
    }
    return passed
  }

  /// QEMU's `qcow2_co_can_store_new_dirty_bitmap` (the directory on disk
  /// counts, not the bitmaps added in memory).
  private func checkCanStore(_ name: String, granularity: Int64) throws {
    let header = driver.header
    guard header.version >= 3 else {
      throw BlockError(.invalidArgument, "Cannot store dirty bitmaps in qcow2 v2 files")
    }
    try Self.checkConstraints(name, granularity: granularity, header: header)
    guard let directory = bitmapsExtension(header) else { return }
    guard directory.count < Qcow2BitmapInfo.maxBitmaps else {
      throw BlockError(
        .invalidArgument, "Maximum number of persistent bitmaps is already reached")
    }
    let entrySize = UInt64(Qcow2BitmapInfo.entryBytes(nameLength: name.utf8.count))
    guard directory.size + entrySize <= Qcow2BitmapInfo.maxDirectoryBytes else {
      throw BlockError(.invalidArgument, "Not enough space in the bitmap directory")
    }
  }

  /// QEMU's `check_constraints_on_bitmap`.
  static func checkConstraints(_ name: String, granularity: Int64, header: Qcow2Header) throws {
    let bitmapBytes = ((Int64(header.size) + granularity - 1) / granularity + 7) / 8
    guard bitmapBytes <= 0x2000_0000, bitmapBytes <= 0x800_0000 * header.clusterSize else {
      throw BlockError(
        .invalidArgument,
        "Too much space will be occupied by the bitmap. Use larger granularity")
    }
    guard name.utf8.count <= 1023 else {
      throw BlockError(.invalidArgument, "Name length exceeds maximum (1023 characters)")
    }
  }

  /// The count and directory size of the header's bitmaps extension, nil
  /// when there is none (or an invalidated one).
  private func bitmapsExtension(_ header: Qcow2Header) -> (count: UInt32, size: UInt64)? {
    guard header.autoclearFeatures & Qcow2Feature.bitmaps != 0,
      let ext = header.extensions.first(where: { $0.type == Qcow2HeaderExtension.bitmaps }),
      ext.data.count == 24
    else { return nil }
    return (ext.data.uint32(at: 0), ext.data.uint64(at: 8))
  }

  /// Removes the bitmap (QEMU's `block_dirty_bitmap_remove`): it leaves
  /// the directory on disk at once (a new directory, the header, then its
  /// clusters freed), then memory.
  public func remove(_ name: String) async throws {
    _ = try lookup(name)
    try await driver.lock.withLock {
      let file = try driver.fileNode(node)
      var directory = try await loadedDirectory(file)
      guard let found = directory.firstIndex(where: { $0.name == name }) else { return }
      let removed = directory.remove(at: found)
      do {
        try await replaceDirectory(directory)
      } catch let error as BlockError {
        throw BlockError(
          error.code, "Failed to update bitmap extension: \(error.codeDescription)")
      }
      try await freeClusters(of: removed)
    }
    // Looked up again: the directory update suspended.
    guard let index = entries.firstIndex(where: { $0.name == name }) else { return }
    if tracksWrites, let bitmap = entries[index].bitmap { node.removeDirtyBitmap(bitmap) }
    entries.remove(at: index)
  }

  /// Clears the bitmap (QEMU's `block_dirty_bitmap_clear`).
  public func clear(_ name: String) throws {
    try bitmap(name).clear()
  }

  /// Enables or disables the bitmap (QEMU's `block_dirty_bitmap_enable`
  /// and `_disable`).
  public func setEnabled(_ name: String, _ enabled: Bool) throws {
    try bitmap(name).isEnabled = enabled
  }

  /// Marks in bitmap `name` every chunk dirty in the bitmap `source`
  /// finds, with the disk size it covers (QEMU's
  /// `block_dirty_bitmap_merge`: the target is looked up first, then the
  /// source; both must cover disks of the same size).
  public func merge(into name: String, source: () throws -> (DirtyBitmap, diskSize: Int64))
    throws
  {
    let target = try bitmap(name)
    let (bitmap, sourceDiskSize) = try source()
    try merge(bitmap, diskSize: sourceDiskSize, into: target)
  }

  /// Marks in bitmap `name` every chunk dirty in `source`, a bitmap of a
  /// disk of `diskSize` bytes (which must be this image's disk size).
  public func merge(into name: String, from source: DirtyBitmap, diskSize sourceDiskSize: Int64)
    throws
  {
    try merge(source, diskSize: sourceDiskSize, into: bitmap(name))
  }

  private func merge(
    _ bitmap: DirtyBitmap, diskSize sourceDiskSize: Int64, into target: DirtyBitmap
  )
    throws
  {
    guard sourceDiskSize == diskSize else {
      throw BlockError(
        .invalidArgument,
        "Bitmaps are of different sizes (destination size is \(diskSize), source size is "
          + "\(sourceDiskSize)) and can't be merged")
    }
    target.merge(bitmap)
  }

  /// The size of the disk the bitmaps cover.
  public var diskSize: Int64 { Int64(driver.header.size) }

  /// Stores the bitmaps (QEMU's `qcow2_store_persistent_dirty_bitmaps`):
  /// each consistent bitmap gets new data clusters and a new table, in
  /// directory order, with the in-use flag cleared; inconsistent ones stay
  /// as they are; then a new directory and the header; then the old
  /// directory and tables are freed.
  public func store() async throws {
    try await driver.lock.withLock { try await storeLocked() }
  }

  private func storeLocked() async throws {
    let file = try driver.fileNode(node)
    var directory = try await loadedDirectory(file)
    // QEMU writes nothing unless a consistent bitmap is to be stored.
    var needsWrite = false
    var dropped: [Qcow2BitmapInfo] = []
    var stored: [String: DirtyBitmap] = [:]
    // QEMU walks its bitmaps newest first.
    // A read-only bitmap is on disk as it is (QEMU's store skips it).
    for entry in entries.reversed() {
      guard let bitmap = entry.bitmap, !bitmap.isReadOnly else { continue }
      needsWrite = true
      if let index = directory.firstIndex(where: { $0.name == entry.name }) {
        guard directory[index].inUse else {
          throw BlockError(
            .invalidArgument, "Bitmap '\(entry.name)' already exists in the image")
        }
        dropped.append(directory[index])
        directory[index].tableOffset = 0
        directory[index].tableEntries = 0
      } else {
        directory.append(
          Qcow2BitmapInfo(
            name: entry.name, granularity: UInt64(bitmap.granularity), inUse: false, auto: false))
      }
      let index = directory.firstIndex(where: { $0.name == entry.name })!
      directory[index].inUse = false
      directory[index].auto = bitmap.isEnabled
      directory[index].granularity = UInt64(bitmap.granularity)
      stored[entry.name] = bitmap
    }
    guard needsWrite else { return }
    _ = try driver.refcountsForWrite()
    for index in directory.indices {
      guard let bitmap = stored[directory[index].name] else { continue }
      let (offset, count) = try await storeBitmap(bitmap, file: file)
      directory[index].tableOffset = UInt64(offset)
      directory[index].tableEntries = UInt32(count)
    }
    do {
      try await replaceDirectory(directory)
    } catch let error as BlockError {
      throw BlockError(error.code, "Failed to update bitmap extension: \(error.codeDescription)")
    }
    for old in dropped { try await freeClusters(of: old) }
  }

  /// QEMU's `store_bitmap`: a data cluster for each part of the bitmap
  /// with a dirty chunk (the others get a zero table entry), then the
  /// table. Returns the table's offset and entry count.
  private func storeBitmap(_ bitmap: DirtyBitmap, file: BlockNode) async throws -> (Int64, Int) {
    let refcounts = try driver.refcountsForWrite()
    let clusterSize = driver.header.clusterSize
    let diskSize = Int64(driver.header.size)
    let chunks = (diskSize + bitmap.granularity - 1) / bitmap.granularity
    let count = Int((chunks + clusterSize * 8 - 1) / (clusterSize * 8))
    var table = [UInt8](repeating: 0, count: count * 8)
    for index in 0..<count {
      guard let data = bitmap.dataCluster(index, clusterSize: clusterSize, diskSize: diskSize)
      else { continue }
      let offset = try await refcounts.allocate(clusters: 1, file: file)
      try await driver.checkOverlapBeforeWrite(node, offset: offset, size: clusterSize)
      try await file.write(at: offset, bytes: data)
      table.setUInt64(UInt64(offset), at: index * 8)
    }
    let tableBytes = Int64(table.count)
    let tableOffset = try await refcounts.allocate(
      clusters: (tableBytes + clusterSize - 1) / clusterSize, file: file)
    try await driver.checkOverlapBeforeWrite(node, offset: tableOffset, size: tableBytes)
    try await file.write(at: tableOffset, bytes: table)
    return (tableOffset, count)
  }

  /// QEMU's `free_bitmap_clusters`: each data cluster of the table, then
  /// the table.
  private func freeClusters(of bitmap: Qcow2BitmapInfo) async throws {
    guard bitmap.tableOffset != 0, bitmap.tableEntries > 0 else { return }
    let file = try driver.fileNode(node)
    let refcounts = try driver.refcountsForWrite()
    let table = try await file.read(
      at: Int64(bitmap.tableOffset), count: Int(bitmap.tableEntries) * 8
    ).bigEndianUInt64s(count: Int(bitmap.tableEntries))
    for entry in table {
      let offset = Int64(entry & 0x00FF_FFFF_FFFF_FE00)
      guard offset != 0 else { continue }
      let freed = try await refcounts.free(
        offset: offset, bytes: driver.header.clusterSize, file: file)
      try await driver.passDiscard(file, freed: freed, type: .always)
    }
    let freed = try await refcounts.free(
      offset: Int64(bitmap.tableOffset), bytes: Int64(bitmap.tableEntries) * 8, file: file)
    try await driver.passDiscard(file, freed: freed, type: .other)
  }

  /// QEMU's `update_ext_header_and_dir`: a non-empty directory goes to new
  /// clusters (metadata flushed), the header then names it (or drops the
  /// extension and the bitmaps bit), then the old directory is freed.
  private func replaceDirectory(_ directory: [Qcow2BitmapInfo]) async throws {
    let file = try driver.fileNode(node)
    let refcounts = try driver.refcountsForWrite()
    let old = bitmapsExtensionLocation()
    var offset: Int64 = 0
    let bytes = Qcow2BitmapInfo.directory(directory)
    if !directory.isEmpty {
      guard directory.count <= Qcow2BitmapInfo.maxBitmaps else {
        throw BlockError(.invalidArgument)
      }
      let clusterSize = driver.header.clusterSize
      offset = try await refcounts.allocate(
        clusters: (Int64(bytes.count) + clusterSize - 1) / clusterSize, file: file)
      try await driver.checkOverlapBeforeWrite(node, offset: offset, size: Int64(bytes.count))
      try await file.write(at: offset, bytes: bytes)
      try await driver.snapshotMetadataBarrier(node)
    }
    try await writeHeader(count: directory.count, directorySize: bytes.count, offset: offset)
    if let old, old.size > 0 {
      let freed = try await refcounts.free(offset: old.offset, bytes: old.size, file: file)
      try await driver.passDiscard(file, freed: freed, type: .other)
    }
  }

  /// QEMU's `update_ext_header_and_dir_in_place`: the bitmaps bit cleared
  /// in the header, the directory rewritten where it is (same size), the
  /// metadata flushed, the bit set again.
  func updateDirectoryInPlace(_ directory: [Qcow2BitmapInfo]) async throws {
    let file = try driver.fileNode(node)
    guard let location = bitmapsExtensionLocation() else { throw BlockError(.invalidArgument) }
    let bytes = Qcow2BitmapInfo.directory(directory)
    guard Int64(bytes.count) == location.size else { throw BlockError(.invalidArgument) }
    try await driver.rewriteHeader(file) { $0.autoclearFeatures &= ~Qcow2Feature.bitmaps }
    try await file.write(at: location.offset, bytes: bytes)
    try await driver.snapshotMetadataBarrier(node)
    try await driver.rewriteHeader(file) { $0.autoclearFeatures |= Qcow2Feature.bitmaps }
  }

  /// The directory the editor loaded, as it is on disk now: read whatever
  /// the autoclear bit says (see ``Qcow2BitmapInfo/readAll(from:header:ignoringAutoclear:)``).
  func loadedDirectory(_ file: BlockNode) async throws -> [Qcow2BitmapInfo] {
    try await Qcow2BitmapInfo.readAll(from: file, header: driver.header, ignoringAutoclear: true)
  }

  /// Where the current directory is, from the header's extension (whatever
  /// the autoclear bit says, as for ``loadedDirectory(_:)``).
  private func bitmapsExtensionLocation() -> (offset: Int64, size: Int64)? {
    let header = driver.header
    guard let ext = header.extensions.first(where: { $0.type == Qcow2HeaderExtension.bitmaps }),
      ext.data.count == 24
    else { return nil }
    return (Int64(ext.data.uint64(at: 16)), Int64(ext.data.uint64(at: 8)))
  }

  /// QEMU's `update_header_sync` after a directory change: the bitmaps
  /// extension (only when there are bitmaps) and bit, the whole header
  /// written and flushed.
  private func writeHeader(count: Int, directorySize: Int, offset: Int64) async throws {
    let file = try driver.fileNode(node)
    try await driver.rewriteHeader(file) { header in
      header.extensions.removeAll { $0.type == Qcow2HeaderExtension.bitmaps }
      if count > 0 {
        header.extensions.append(
          Qcow2HeaderExtension(
            type: Qcow2HeaderExtension.bitmaps,
            data: Qcow2BitmapInfo.extensionData(
              count: count, directorySize: directorySize, offset: offset)))
        header.autoclearFeatures |= Qcow2Feature.bitmaps
      } else {
        header.autoclearFeatures &= ~Qcow2Feature.bitmaps
      }
    }
  }
}
