import BlockCore

/// The persistent bitmaps of a node reopened read-only, then read-write
/// (QEMU's `qcow2_reopen_bitmaps_ro` and `qcow2_reopen_bitmaps_rw`): going
/// read-only stores them (in-use flags cleared) and makes them read-only in
/// memory; going read-write marks them in use again on disk and makes them
/// writable. While a bitmap is read-only the node refuses writes
/// (``BlockNode/hasReadOnlyBitmaps``), as QEMU's does when a read-only
/// reopen failed after the bitmaps were stored.
extension Qcow2BitmapEditor {
  /// Stores the bitmaps (``store()``) and makes every consistent one
  /// read-only; a failure fails the reopen, the bitmaps unchanged.
  func storeForReadOnly() async throws {
    try await store()
    for bitmap in consistentBitmaps { bitmap.isReadOnly = true }
  }

  /// Marks the read-only bitmaps in use on disk again and makes them
  /// writable. Each bitmap of the directory must be in memory; one not in
  /// use on disk must be read-only and consistent in memory, one in use
  /// must not be read-only unless it is inconsistent (QEMU's checks and
  /// errors, with the node's name for the image's). The directory is
  /// rewritten in place (the header's bitmaps bit cleared meanwhile).
  func makeWritable() async throws {
    try await driver.lock.withLock { try await makeWritableLocked() }
  }

  private func makeWritableLocked() async throws {
    let file = try driver.fileNode(node)
    var directory = try await loadedDirectory(file)
    guard !directory.isEmpty else { return }
    var needsUpdate = false
    for index in directory.indices {
      let name = directory[index].name
      guard let entry = entries.first(where: { $0.name == name }) else {
        throw BlockError(.invalidArgument, "Unexpected bitmap '\(name)' in image '\(node.name)'")
      }
      let readOnly = entry.bitmap?.isReadOnly ?? false
      if !directory[index].inUse {
        guard readOnly else {
          throw BlockError(
            .invalidArgument,
            "Corruption: bitmap '\(name)' is not marked IN_USE in the image '\(node.name)' "
              + "and not marked readonly in RAM")
        }
        directory[index].inUse = true
        needsUpdate = true
      } else if readOnly {
        throw BlockError(
          .invalidArgument,
          "Corruption: bitmap '\(name)' is marked IN_USE in the image '\(node.name)' but it "
            + "is readonly and consistent in RAM")
      }
    }
    if needsUpdate {
      guard !file.isReadOnly else {
        throw BlockError(
          .invalidArgument, "Failed to reopen bitmaps rw: no write access the protocol file")
      }
      do {
        try await updateDirectoryInPlace(directory)
      } catch let error as BlockError {
        throw BlockError(error.code, "Cannot update bitmap directory: \(error.codeDescription)")
      }
    }
    for bitmap in consistentBitmaps { bitmap.isReadOnly = false }
  }
}
