import BlockCore
import BlockDrivers

/// `convert --bitmaps [--skip-broken-bitmaps]`, as qemu-img 7.2's
/// `convert_check_bitmaps` and `convert_copy_bitmaps`: the source's
/// persistent bitmaps are checked before the target is created and copied
/// (added with the source's granularity and enabled state, then merged
/// from the source) once the data is. QEMU walks a node's bitmaps newest
/// first, so the source's directory is walked from its end.
@BlockActor
struct ConvertBitmaps {
  /// The source's bitmaps, loaded (not marked in use: the source is
  /// read-only).
  private let source: Qcow2BitmapEditor

  /// Checks that the single source can give its bitmaps (a qcow2 version 3
  /// image) and, unless `skipBroken`, that none is inconsistent; the
  /// message is QEMU's.
  static func check(_ source: BlockNode, skipBroken: Bool) async throws -> ConvertBitmaps {
    guard let qcow2 = source.driver as? Qcow2Driver, qcow2.supportsPersistentBitmaps else {
      throw BlockError(.notSupported, "Source lacks bitmap support")
    }
    let editor = try await Qcow2BitmapEditor.open(source)
    if !skipBroken {
      for name in editor.names.reversed() where try editor.isInconsistent(name) {
        throw BlockError(
          .invalidArgument,
          "Cannot copy inconsistent bitmap '\(name)'\n"
            + "Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it")
      }
    }
    return ConvertBitmaps(source: editor)
  }

  /// QEMU's check after opening the target: a format that can store
  /// bitmaps.
  static func checkTarget(_ target: BlockNode) throws {
    guard let qcow2 = target.driver as? Qcow2Driver, qcow2.supportsPersistentBitmaps else {
      throw BlockError(
        .notSupported, "Format driver '\(target.driver.formatName)' does not support bitmaps")
    }
  }

  /// Adds each bitmap to the target and fills it from the source's; an
  /// inconsistent one is skipped with a warning (only reached with
  /// `skipBroken`). A bitmap that cannot be filled is removed again. The
  /// target stores them when it closes.
  func copy(to target: BlockNode, warn: (String) -> Void) async throws {
    guard let qcow2 = target.driver as? Qcow2Driver else { return }
    let editor = try await qcow2.bitmapEditor(target)
    for name in source.names.reversed() {
      if try source.isInconsistent(name) {
        warn("Skipping inconsistent bitmap '\(name)'")
        continue
      }
      let bitmap = try source.bitmap(name)
      do {
        try editor.add(name, granularity: bitmap.granularity, disabled: !bitmap.isEnabled)
      } catch {
        throw BlockError(
          .invalidArgument, "Failed to create bitmap \(name): \(errorMessage(error))")
      }
      do {
        try editor.merge(into: name, from: bitmap, diskSize: source.diskSize)
      } catch {
        try? await editor.remove(name)
        throw BlockError(
          .invalidArgument, "Failed to populate bitmap \(name): \(errorMessage(error))")
      }
    }
  }
}
