import BlockCore

extension Qcow2Driver {
  /// Whether refcount updates may reach the disk after the L2 entries that
  /// use their clusters (QEMU's `use_lazy_refcounts`): the image's lazy
  /// refcounts feature, unless the `lazy-refcounts` open option overrides it.
  var usesLazyRefcounts: Bool {
    guard header.version >= 3, refcounts != nil else { return false }
    return safety.lazyRefcounts
      ?? (header.compatibleFeatures & Qcow2Feature.lazyRefcounts != 0)
  }

  /// What must happen before an L2 entry may point at newly counted clusters
  /// (QEMU's `qcow2_cache_set_dependency` of the L2 cache on the refcount
  /// cache): normally a flush, so that the refcounts are on disk first; with
  /// lazy refcounts only the dirty bit, set once (QEMU's
  /// `qcow2_mark_dirty`), since a dirty image is repaired when it is next
  /// opened. Call with the lock held.
  func refcountsReachedDisk(_ file: BlockNode) async throws {
    guard usesLazyRefcounts else {
      try await file.flush()
      return
    }
    try await markDirty(file)
  }

  /// Runs an allocation of guest data clusters; their refcount updates stay
  /// in the refcount cache (QEMU's write-back refcount cache). Normally the
  /// L2 entries that use the clusters depend on them: the blocks are written
  /// (and the file flushed) before those entries (see
  /// ``writeBackL2Tables(_:)``). With lazy refcounts
  /// ``refcountsReachedDisk(_:)`` marks the image dirty instead, and the
  /// blocks are written when the image is flushed while clean, when the
  /// cache evicts them, before a new L2 table, L1 table or refcount block is
  /// allocated, before a check, and on close, which then marks the image
  /// clean; a crash in between leaves a dirty image whose refcounts lag
  /// ("refcount=0 reference=1"), repaired when it is next opened.
  func allocatingData<T>(_ refcounts: Qcow2Refcounts, _ body: @BlockActor () async throws -> T)
    async throws -> T
  {
    refcounts.defersWrites = true
    defer { refcounts.defersWrites = false }
    return try await body()
  }

  /// Sets the dirty bit (incompatible bit 0) in the file, synchronously, if
  /// it is not set yet (QEMU's `qcow2_mark_dirty`).
  func markDirty(_ file: BlockNode) async throws {
    guard header.incompatibleFeatures & Qcow2Feature.dirty == 0 else { return }
    // Whatever was written before must not look like lazily counted work.
    try await file.flush()
    try await file.writeQcow2HeaderField(
      .incompatibleFeatures, header.incompatibleFeatures | Qcow2Feature.dirty)
    try await file.flush()
    header.incompatibleFeatures |= Qcow2Feature.dirty
  }
}
