import BlockCore

/// The persistent bitmaps of a node opened writable, for library callers
/// (an incremental-backup tool) and `convert --bitmaps`: the editor that
/// keeps them current (``Qcow2BitmapEditor``), whose additions and removals
/// take effect on the node at once and are stored, with every bitmap's
/// data, when the node closes.
extension Qcow2Driver {
  /// The editor of the node's persistent bitmaps: the one the writable
  /// open made (bitmaps loaded, marked in use, attached), or a new one for
  /// an image that had none. Fails with EACCES on a read-only node, also one
  /// reopened read-only (read
  /// its bitmaps with ``Qcow2BitmapEditor/open(_:)``) and with EINVAL on a
  /// version 2 image, which cannot store bitmaps.
  public func bitmapEditor(_ node: BlockNode) async throws -> Qcow2BitmapEditor {
    guard refcounts != nil, !node.isReadOnly else {
      throw BlockError(.permissionDenied, "Persistent bitmaps of a read-only node cannot be edited")
    }
    if let trackedBitmaps { return trackedBitmaps }
    guard header.version >= 3 else {
      throw BlockError(.invalidArgument, "Cannot store dirty bitmaps in qcow2 v2 files")
    }
    let editor = try await Qcow2BitmapEditor.open(node, tracksWrites: true)
    // Another caller may have made one while this one loaded.
    if let trackedBitmaps {
      for bitmap in editor.consistentBitmaps { node.removeDirtyBitmap(bitmap) }
      return trackedBitmaps
    }
    trackedBitmaps = editor
    return editor
  }

  /// Whether the image can hold persistent bitmaps (QEMU's
  /// `qcow2_supports_persistent_dirty_bitmap`: version 3).
  public var supportsPersistentBitmaps: Bool { header.version >= 3 }
}
