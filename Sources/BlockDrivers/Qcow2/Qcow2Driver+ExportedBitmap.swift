import BlockCore

extension Qcow2Driver {
  /// The persistent bitmap `name` of this node for an export to read
  /// (QEMU's `bdrv_find_dirty_bitmap`, then `bdrv_dirty_bitmap_check` with
  /// `BDRV_BITMAP_ALLOW_RO`): on a writable open the bitmap the node keeps
  /// current (enabled ones go on being marked by its writes), on a
  /// read-only open the bitmap read from the image. Nil when the image has
  /// no bitmap of that name; "Bitmap 'NAME' is inconsistent and cannot be
  /// used" for one left in use by a program that did not store it.
  public func exportedBitmap(_ node: BlockNode, named name: String) async throws -> DirtyBitmap? {
    let inconsistent = BlockError(
      .invalidArgument, "Bitmap '\(name)' is inconsistent and cannot be used")
    if let tracked = trackedBitmaps {
      guard tracked.names.contains(name) else { return nil }
      guard let bitmap = try? tracked.bitmap(name) else { throw inconsistent }
      return bitmap
    }
    guard let info = try await persistentBitmaps(node).first(where: { $0.name == name }) else {
      return nil
    }
    if info.inUse { throw inconsistent }
    return try await loadPersistentBitmap(node, named: name)
  }
}
