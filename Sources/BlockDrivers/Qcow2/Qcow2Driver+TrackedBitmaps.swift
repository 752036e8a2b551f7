import BlockCore

/// Persistent bitmaps kept current by a writable open, as QEMU's
/// `qcow2_load_dirty_bitmaps` at open and `qcow2_store_persistent_dirty_bitmaps`
/// at close: the bitmaps are loaded and marked in use on disk, attached to
/// the node (so every write, zero-write and discard through the engine marks
/// the enabled ones), and stored with the in-use flag cleared when the node
/// closes. A bitmap left in use (the program was killed) is inconsistent:
/// not loaded, not marked, kept in the directory as it is.
extension Qcow2Driver {
  /// Loads the image's persistent bitmaps into the node, when it has a
  /// valid bitmaps extension (version 3). Fails the open as QEMU's does
  /// when the directory or a bitmap cannot be read.
  func trackPersistentBitmaps(_ node: BlockNode) async throws {
    guard header.version >= 3, header.autoclearFeatures & Qcow2Feature.bitmaps != 0,
      header.extensions.contains(where: { $0.type == Qcow2HeaderExtension.bitmaps })
    else { return }
    trackedBitmaps = try await Qcow2BitmapEditor.open(node, tracksWrites: true)
  }

  /// Stores the tracked bitmaps and detaches them (on close); a failure is
  /// reported as QEMU's and leaves them in use, so that the next open
  /// finds them inconsistent. An image downgraded to version 2 meanwhile
  /// (`amend -o compat=0.10`) has them stored as well, as QEMU 7.2 does:
  /// the extension stays in the version 2 header, which QEMU's next open
  /// warns about and ignores (their clusters then count as leaked).
  func storeTrackedBitmaps(_ node: BlockNode) async {
    guard let editor = trackedBitmaps else { return }
    trackedBitmaps = nil
    for bitmap in editor.consistentBitmaps { node.removeDirtyBitmap(bitmap) }
    do {
      try await editor.store()
    } catch {
      let message = (error as? BlockError)?.message ?? "\(error)"
      errorReport("Lost persistent bitmaps during inactivation of node '\(node.name)': \(message)")
    }
  }
}

extension Qcow2Driver {
  /// A read-only open loads the persistent bitmaps as QEMU's
  /// `qcow2_load_dirty_bitmaps` does, marking nothing and keeping nothing,
  /// so that a broken bitmaps extension, directory or table fails the open
  /// with QEMU's message, whatever the open is for.
  func validatePersistentBitmaps(_ node: BlockNode) async throws {
    guard header.extensions.contains(where: { $0.type == Qcow2HeaderExtension.bitmaps })
    else { return }
    _ = try await Qcow2BitmapEditor.open(node)
  }
}
