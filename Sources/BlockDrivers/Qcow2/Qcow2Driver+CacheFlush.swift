import BlockCore

extension Qcow2Driver {
  /// Runs a write of the L2 table at `offset`, remembering the table when
  /// the write fails.
  func recordingL2Failure(at offset: Int64, _ write: @BlockActor () async throws -> Void)
    async throws
  {
    do {
      try await write()
      safety.unwrittenL2Tables.remove(offset)
    } catch {
      safety.unwrittenL2Tables.insert(offset)
      throw error
    }
  }

  /// QEMU's cache flushes in `qcow2_inactivate`: the L2 table cache, then
  /// the refcount block cache, each writing its dirty tables (the tables of
  /// the other cache it depends on first, then a flush) and flushing the
  /// file; a failure is reported as QEMU's `error_report` does. The dirty
  /// tables are those allocating writes left in the caches (write-back) and
  /// those whose write-through failed; the latter are written again from
  /// the cache, which holds what the file last had. A table no longer in
  /// use passes the instrumentation point of its write (where QEMU's cache
  /// still holds dirty entries after such a failure) but is not written:
  /// its cluster may have been freed and reused. Returns whether both
  /// flushes succeeded.
  func flushCachesForClose(_ node: BlockNode) async -> Bool {
    guard let file = node.file, let refcounts else { return true }
    var failures: [BlockError?] = []
    for _ in ["L2 table", "refcount block"] {
      failures.append(
        await firstFailure(
          { try await refcounts.writeDeferred(file: file) },
          { try await self.rewriteRefcountBlocks(refcounts, file: file) },
          { try await self.writeBackL2Tables(node) },
          { try await self.rewriteL2Tables(file: file) },
          { try await file.flush() }))
    }
    if let failure = failures[0] {
      errorReport("Failed to flush the L2 table cache: \(failure.codeDescription)")
    }
    if let failure = failures[1] {
      errorReport("Failed to flush the refcount block cache: \(failure.codeDescription)")
    }
    return failures.allSatisfy { $0 == nil }
  }

  /// The error of the first step that fails, running them in order.
  private func firstFailure(_ steps: (@BlockActor () async throws -> Void)...) async
    -> BlockError?
  {
    for step in steps {
      do {
        try await step()
      } catch {
        return error as? BlockError ?? BlockError(.ioError)
      }
    }
    return nil
  }

  /// Writes again the L2 tables whose write failed that the active L1 table
  /// still points at.
  private func rewriteL2Tables(file: BlockNode) async throws {
    let live = Set(l1Table.map { Int64($0 & Qcow2Entry.offsetMask) })
    for offset in safety.unwrittenL2Tables.sorted() {
      try await recordingL2Failure(at: offset) {
        try await file.emit(.l2Update)
        guard live.contains(offset), let table = l2Cache.table(at: offset) else { return }
        var bytes = [UInt8](repeating: 0, count: table.count * 8)
        for (index, word) in table.words.enumerated() { bytes.setUInt64(word, at: index * 8) }
        try await file.write(at: offset, bytes: bytes)
      }
    }
  }

  /// Writes again the refcount blocks whose write failed that the refcount
  /// table still points at.
  private func rewriteRefcountBlocks(_ refcounts: Qcow2Refcounts, file: BlockNode) async throws {
    let live = Set(refcounts.table.map { Int64($0 & Qcow2Entry.offsetMask) })
    for offset in refcounts.unwrittenBlocks.sorted() {
      try await file.emit(.refblockUpdatePart)
      if live.contains(offset), let block = refcounts.blocks[offset] {
        try await file.write(at: offset, bytes: block.bytes)
      }
      refcounts.unwrittenBlocks.remove(offset)
    }
  }

  /// Prints a line as QEMU's `error_report` does: where the opener asked
  /// (which adds the program's name), else on standard error.
  func errorReport(_ message: String) {
    if let errorReport = safety.errorReport {
      errorReport(message)
    } else {
      report(message + "\n")
    }
  }
}
