import BlockCore

extension Qcow2Driver {
  /// QEMU's writable open of a dirty image (lazy refcounts left it
  /// inconsistent): a check repairing leaks and errors, its diagnostics where
  /// the driver's messages go (standard error unless the opener gave a sink), which clears the dirty bit; an image the repair leaves
  /// with errors is not opened.
  func repairIfDirty(_ node: BlockNode) async throws {
    guard header.incompatibleFeatures & Qcow2Feature.dirty != 0 else { return }
    let result = try await check(node, mode: [.fixLeaks, .fixErrors])
    // The program name of error_report lines is the caller's; the lines go
    // out without it.
    for line in result.messages { report(line + "\n") }
    if let failure = result.failure {
      throw BlockError(failure.code, "Could not repair dirty image: \(failure.codeDescription)")
    }
    if result.checkErrors != 0 {
      let error = BlockError(.ioError)
      throw BlockError(.ioError, "Could not repair dirty image: \(error.codeDescription)")
    }
  }
}

extension Qcow2Driver {
  /// QEMU's `qcow2_inactivate` on close: the persistent bitmaps are stored
  /// (``storeTrackedBitmaps(_:)``), the metadata caches are flushed
  /// (see ``flushCachesForClose(_:)``); when that succeeds, a writable image
  /// left dirty (opened for a check that did not repair it) is marked clean,
  /// as everything this driver wrote is on disk.
  public func close(_ node: BlockNode) async {
    await storeTrackedBitmaps(node)
    guard await flushCachesForClose(node) else { return }
    guard refcounts != nil, header.incompatibleFeatures & Qcow2Feature.dirty != 0,
      header.incompatibleFeatures & Qcow2Feature.corrupt == 0,
      let file = node.file
    else { return }
    header.incompatibleFeatures &= ~Qcow2Feature.dirty
    try? await file.flush()
    try? await file.writeQcow2HeaderField(.incompatibleFeatures, header.incompatibleFeatures)
    try? await file.flush()
  }
}
