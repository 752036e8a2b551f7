extension BlockNode {
  /// Reopens this node and the nodes below it with new options (QEMU's
  /// `bdrv_reopen` keeping the old options): `options` uses QEMU's dotted
  /// keys, those under a child's name (`file.`, `backing.`, `data-file.`)
  /// going to that child; options not given keep their values.
  ///
  /// The engine handles `read-only`, `auto-read-only`, `cache.direct`,
  /// `cache.no-flush`, `discard` and `detect-zeroes` (children inherit the
  /// cache mode, the file and data children read-only; a backing child stays
  /// read-only), each driver the options it can change
  /// (``BlockDriver/prepareReopen(_:_:)``); any other option must keep its
  /// value ("Cannot change the option '...'"). The graph is drained and
  /// flushed, every node is prepared, then all are committed, or, if one
  /// fails, none is: a failed reopen leaves every node as it was. Limits and
  /// lengths are refreshed afterwards. `keepsWriters` says that a user of
  /// the node holds the write permission through the reopen (QEMU's
  /// permission update after the prepares): the node may then not become
  /// read-only.
  public func reopen(_ options: [String: String], keepsWriters: Bool = false) async throws {
    try await drained {
      var queue = BlockReopenQueue()
      queue.add(self, given: options)
      try await queue.run(rootKeepsWriters: keepsWriters)
    }
  }

  /// Changes `cache.direct` and `cache.no-flush` of this node and of every
  /// node below it, which inherit them (``reopen(_:)`` with only those
  /// options). ``CacheMode`` has no "direct without flushes" mode: both on
  /// keep O_DIRECT and the flushes, as opening with both does.
  public func reopenCache(direct: Bool, noFlush: Bool) async throws {
    try await reopen([
      "cache.direct": direct ? "on" : "off", "cache.no-flush": noFlush ? "on" : "off",
    ])
  }

  /// The engine's options as option strings, for a reopen that does not
  /// change them.
  var currentEngineOptions: [String: String] {
    [
      "read-only": options.readOnly ? "on" : "off",
      "cache.direct": options.cache.direct ? "on" : "off",
      "cache.no-flush": options.cache.noFlush ? "on" : "off",
      "discard": options.discard.rawValue,
      "detect-zeroes": options.detectZeroes.rawValue,
    ]
  }

  /// Makes a prepared reopen current (QEMU's `bdrv_reopen_commit` after the
  /// driver's): the engine options, the stored open options and which
  /// children are written through.
  func commitReopen(_ nodeOptions: NodeOptions, options: [String: String]) {
    self.options = nodeOptions
    openOptions = options.filter { !BlockReopenQueue.engineKeys.contains($0.key) }
    setChildrenWritable(!nodeOptions.readOnly)
  }

  /// Refreshes the limits and the length once the reopen committed (QEMU's
  /// `bdrv_refresh_limits` and `bdrv_refresh_total_sectors`); a length the
  /// driver cannot tell keeps the old one.
  func refreshAfterReopen() async {
    refreshLimits()
    if let bytes = try? await driver.length(self) {
      length = Self.sectorRounded(bytes)
    }
  }
}
