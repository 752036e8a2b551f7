extension BlockNode {
  /// Flushes the node and every child it writes through (QEMU's `bdrv_co_flush`).
  ///
  /// One flush runs at a time per node; later ones queue behind it. Flush-to-OS
  /// always runs; flush-to-disk is skipped under cache=unsafe and when nothing
  /// was written since the last successful flush.
  public func flush() async throws {
    guard isInserted, !isReadOnly else { return }
    try await inFlight {
      let generation = writeGeneration
      while flushActive {
        await flushQueue.wait()
      }
      flushActive = true
      defer {
        flushActive = false
        flushQueue.wakeOne()
      }
      try await file?.emit(.flushToOS)
      try await driver.flushToOS(self)
      if !options.cache.noFlush && flushedGeneration != generation {
        try await file?.emit(.flushToDisk)
        try await driver.flushToDisk(self)
      }
      var firstError: Error?
      for child in children where child.writable {
        do { try await child.node.flush() } catch { firstError = firstError ?? error }
      }
      if let firstError { throw firstError }
      flushedGeneration = generation
    }
  }
}
