import BlockCore

extension Qcow2Driver {
  /// QEMU's `qcow2_reopen_prepare`: the runtime options
  /// (``Qcow2OpenOptions``: `lazy-refcounts`, `overlap-check` and its
  /// switches, the cache sizes, `cache-clean-interval`, `pass-discard-*`)
  /// are read and checked as at open and applied on commit; `encrypt.format`
  /// must match the image. Going read-only marks a dirty image clean (QEMU's
  /// `qcow2_mark_clean`), as does turning lazy refcounts off. Going
  /// read-write loads what a writable open loads (the refcount table, the
  /// snapshot table for the overlap checks) and, once committed, repairs a
  /// dirty image (see docs/qcow2.md: QEMU does not, and would allocate
  /// clusters its lazy refcounts still count as free).
  public func prepareReopen(_ node: BlockNode, _ request: inout BlockReopenRequest) async throws
    -> any BlockReopenChange
  {
    var options = DriverOptions(request.options)
    let encryption = options.takeChild("encrypt")
    let runtime = try Qcow2OpenOptions.take(from: &options)
    request.options = options.values
    _ = try runtime.cacheSizes(for: header)
    if runtime.lazyRefcounts == true && header.version < 3 {
      throw BlockError(
        .invalidArgument,
        "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level")
    }
    if let format = encryption["format"], header.cryptMethod == 0 {
      throw BlockError(
        .invalidArgument,
        "No encryption in image header, but options specified format '\(format)'")
    }
    let file = try fileNode(node)
    let readOnly = request.nodeOptions.readOnly
    let lazyAfter =
      runtime.lazyRefcounts ?? (header.compatibleFeatures & Qcow2Feature.lazyRefcounts != 0)
    let wasReadOnly = node.isReadOnly
    if !node.isReadOnly && readOnly, let trackedBitmaps {
      // QEMU's `qcow2_reopen_bitmaps_ro`: stored before the flush; a
      // failure fails the reopen.
      try await trackedBitmaps.storeForReadOnly()
    }
    if !node.isReadOnly {
      // QEMU flushes its caches before it resizes them or goes read-only
      // (`qcow2_update_options_prepare`, `qcow2_reopen_prepare`); lazily
      // deferred refcount updates must be on disk before the image says
      // it is clean.
      try await writeBackMetadata(node)
    }
    if !node.isReadOnly && (readOnly || (usesLazyRefcounts && !lazyAfter)) {
      try await markClean(file)
    }
    var loaded: (refcounts: [UInt64], snapshots: Qcow2SnapshotTable)?
    if !readOnly && refcounts == nil {
      loaded = try await loadForWriting(file)
    }
    let discardUnmap = request.nodeOptions.discard == .unmap
    return ClosureReopen(commit: { [self] in
      try? self.apply(runtime, discardUnmap: discardUnmap)
      if let loaded {
        await self.becomeWritable(node, loaded.refcounts, loaded.snapshots)
      }
      if !readOnly { await self.makeBitmapsWritable(node, wasReadOnly: wasReadOnly) }
    })
  }

  /// QEMU's `qcow2_join_options`: a new `overlap-check` (or its template)
  /// replaces every old overlap option, a new `cache-size` the old L2 and
  /// refcount cache sizes; and an old `cache-size` goes when any cache size
  /// is set and `cache-size` was not given anew (QEMU tests "any", where its
  /// comment says "all": kept, as it is what QEMU does).
  public func joinReopenOptions(_ options: inout [String: String], old: [String: String]) {
    var old = old
    let hasNewTotal = options["cache-size"] != nil
    if options["overlap-check"] != nil || options["overlap-check.template"] != nil {
      old = old.filter { !$0.key.hasPrefix("overlap-check") }
    }
    if hasNewTotal {
      old["l2-cache-size"] = nil
      old["refcount-cache-size"] = nil
    }
    options.merge(old) { given, _ in given }
    let anyCacheSize = ["cache-size", "l2-cache-size", "refcount-cache-size"].contains {
      options[$0] != nil
    }
    if anyCacheSize && !hasNewTotal { options["cache-size"] = nil }
  }

  /// Clears the dirty bit of a lazily counted image once its refcounts are
  /// on disk (QEMU's `qcow2_mark_clean`).
  private func markClean(_ file: BlockNode) async throws {
    guard header.incompatibleFeatures & Qcow2Feature.dirty != 0 else { return }
    try await file.flush()
    let features = header.incompatibleFeatures & ~Qcow2Feature.dirty
    try await file.writeQcow2HeaderField(.incompatibleFeatures, features)
    try await file.flush()
    header.incompatibleFeatures = features
  }

  /// QEMU's `qcow2_reopen_commit_post` for a read-write reopen: bitmaps a
  /// read-only reopen stored are marked in use again and made writable
  /// (``Qcow2BitmapEditor/makeWritable()``); a node that was read-only
  /// without them loads, marks and attaches them as a writable open does
  /// (QEMU loads them read-only at the read-only open: the same bitmaps, as
  /// nothing wrote the image meanwhile). A failure is reported as QEMU's; the
  /// read-only bitmaps then go on refusing writes.
  private func makeBitmapsWritable(_ node: BlockNode, wasReadOnly: Bool) async {
    do {
      if let trackedBitmaps {
        try await trackedBitmaps.makeWritable()
      } else if wasReadOnly {
        try await trackPersistentBitmaps(node)
      }
    } catch {
      let message = (error as? BlockError)?.message ?? "\(error)"
      errorReport("\(node.name): Failed to make dirty bitmaps writable: \(message)")
    }
  }

  /// Reads what a writable open has and a read-only one lacks: the refcount
  /// table and the snapshot table.
  private func loadForWriting(_ file: BlockNode) async throws
    -> (refcounts: [UInt64], snapshots: Qcow2SnapshotTable)
  {
    let entries = Int(header.refcountTableClusters) * Int(header.clusterSize) / 8
    let table: [UInt64]
    do {
      try await file.emit(.reftableLoad)
      let bytes = try await file.read(at: Int64(header.refcountTableOffset), count: entries * 8)
      table = bytes.bigEndianUInt64s(count: entries)
    } catch let error as BlockError {
      throw BlockError(
        error.code, "Could not initialize refcount handling: \(error.codeDescription)")
    }
    return (table, try await Qcow2SnapshotTable.read(file, header: header))
  }

  /// Installs the refcounts of a node reopened read-write, then does what a
  /// writable open does to the image: clears the autoclear bits Spindle
  /// does not maintain, drops an invalidated bitmaps extension, and repairs
  /// a dirty image. A failure is reported;
  /// the node stays writable as QEMU's does.
  private func becomeWritable(
    _ node: BlockNode, _ table: [UInt64], _ snapshots: Qcow2SnapshotTable
  ) async {
    refcounts = Qcow2Refcounts(header: header, table: table)
    refcounts?.checkWrite = { [unowned self, weak node] offset, bytes, ignoring in
      guard let node else { return }
      try await self.checkOverlapBeforeWrite(
        node, offset: offset, size: bytes, ignoring: ignoring)
    }
    safety.snapshotTableSize = snapshots.size
    safety.inactiveL1Tables = snapshots.l1Tables
    guard let file = node.file else { return }
    do {
      // The bitmaps bit stays, as at a writable open: the bitmaps are
      // kept current from here on (``makeBitmapsWritable(_:wasReadOnly:)``).
      let hasBitmaps = header.extensions.contains { $0.type == Qcow2HeaderExtension.bitmaps }
      let kept =
        header.autoclearFeatures
        & (Qcow2Feature.rawExternalData | (hasBitmaps ? Qcow2Feature.bitmaps : 0))
      if header.version >= 3 && kept != header.autoclearFeatures {
        try await file.writeQcow2HeaderField(.autoclearFeatures, kept)
        try await file.flush()
        header.autoclearFeatures = kept
      }
      try await dropInvalidatedBitmaps(node)
      try await repairIfDirty(node)
    } catch {
      report("\(error)\n")
    }
  }
}
