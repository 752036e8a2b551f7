import BlockCore

/// What the dirty L2 tables must wait for before they are written (QEMU's
/// `Qcow2Cache.depends` and `depends_on_flush` of the L2 table cache).
struct Qcow2L2Dependencies: Equatable {
  /// Dirty L2 entries point at clusters whose refcount updates are still in
  /// the refcount cache: those blocks are written and the file flushed
  /// first (QEMU's `qcow2_cache_set_dependency(l2_table_cache,
  /// refcount_block_cache)`).
  var onRefcounts = false
  /// Dirty L2 entries map data written since the last flush: the files are
  /// flushed first (QEMU's `qcow2_cache_depends_on_flush`).
  var onFlush = false
}

extension Qcow2Driver {
  /// Records that the cached L2 table at `offset` changed without being
  /// written (QEMU's `qcow2_cache_entry_mark_dirty` after
  /// `qcow2_alloc_cluster_link_l2`): it is written back, after what it
  /// depends on, on a flush, on close, before metadata is read from the
  /// file, or here when the dirty tables would otherwise fill the cache.
  /// `dependsOnRefcounts`: its new entries use clusters whose refcount
  /// updates are still cached. Call with the lock held.
  func markL2Dirty(_ node: BlockNode, at offset: Int64, dependsOnRefcounts: Bool) async throws {
    l2Cache.markDirty(offset)
    l2Dependencies.onFlush = true
    if dependsOnRefcounts { l2Dependencies.onRefcounts = true }
    // Eviction needs a clean table; QEMU writes the victim back when it
    // evicts it.
    if l2Cache.dirtyOffsets.count >= l2Cache.capacity {
      try await writeBackL2Tables(node)
    }
  }

  /// Writes the dirty L2 tables back, whole and in offset order (QEMU's
  /// `qcow2_cache_write` of the L2 table cache): first what they depend on,
  /// the cached refcount blocks written and the files flushed, or only the
  /// flush (QEMU's `qcow2_cache_entry_flush`). A table whose write fails
  /// stays dirty and the error is thrown. Call with the lock held.
  func writeBackL2Tables(_ node: BlockNode) async throws {
    let dirty = l2Cache.dirtyOffsets
    guard !dirty.isEmpty else { return }
    let file = try fileNode(node)
    try await writeRefcountDependency(node)
    if l2Dependencies.onFlush { try await flushFiles(node) }
    l2Dependencies = Qcow2L2Dependencies()
    for offset in dirty.sorted() {
      guard let table = l2Cache.peek(at: offset) else { continue }
      try await checkOverlapBeforeWrite(
        node, offset: offset, size: Int64(table.count) * 8, ignoring: .activeL2)
      try await file.emit(.l2Update)
      try await file.write(at: offset, bytes: table.encoded())
      l2Cache.markClean(offset)
    }
  }

  /// When dirty L2 entries depend on cached refcount updates: writes those
  /// blocks and flushes the files (QEMU's `qcow2_cache_flush_dependency`),
  /// which also covers a pending flush dependency. Call with the lock held.
  func writeRefcountDependency(_ node: BlockNode) async throws {
    guard l2Dependencies.onRefcounts, let refcounts else { return }
    try await refcounts.writeDeferred(file: try fileNode(node))
    try await flushFiles(node)
    l2Dependencies = Qcow2L2Dependencies()
  }

  /// Writes back both metadata caches, L2 tables (after their dependencies)
  /// then every cached refcount update, lazy ones included: for operations
  /// that read metadata from the file or replace the caches (check, amend,
  /// resize, snapshots, reopen). Call with the lock held.
  func writeBackMetadata(_ node: BlockNode) async throws {
    try await writeBackL2Tables(node)
    if let refcounts { try await refcounts.writeDeferred(file: try fileNode(node)) }
  }

  /// Flushes the image file and, when there is one, the external data file.
  private func flushFiles(_ node: BlockNode) async throws {
    let file = try fileNode(node)
    try await file.flush()
    let data = try dataNode(node)
    if data !== file { try await data.flush() }
  }
}

extension Qcow2L2Table {
  /// The table as it is stored: big-endian words.
  func encoded() -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count * 8)
    for (index, word) in words.enumerated() where word != 0 {
      bytes.setUInt64(word, at: index * 8)
    }
    return bytes
  }
}
