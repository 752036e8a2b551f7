extension BlockNode {
  /// Changes `cache.direct` and `cache.no-flush` of this node and of every
  /// node below it, which inherit them (QEMU's `bdrv_reopen` with cache
  /// options): the node is drained, each driver switches its use of the
  /// host page cache, and the limits are refreshed (O_DIRECT brings its
  /// alignment). ``CacheMode`` has no "direct without flushes" mode: both
  /// on keep O_DIRECT and the flushes, as opening with both does.
  public func reopenCache(direct: Bool, noFlush: Bool) async throws {
    try await drained {
      try await applyCache(direct: direct, noFlush: noFlush)
      refreshLimits()
    }
  }

  private func applyCache(direct: Bool, noFlush: Bool) async throws {
    for child in children { try await child.node.applyCache(direct: direct, noFlush: noFlush) }
    try await driver.reopenCache(self, direct: direct)
    let writeCache = options.cache.writeCacheEnabled
    switch (direct, noFlush) {
    case (true, _): options.cache = writeCache ? .none : .directsync
    case (false, true): options.cache = .unsafe
    case (false, false): options.cache = writeCache ? .writeback : .writethrough
    }
  }
}
