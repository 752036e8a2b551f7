import BlockCore

/// blkdebug's `take-child-perms` and `unshare-child-perms` options (QEMU's
/// `blkdebug_child_perm`): permissions blkdebug additionally takes on its
/// image child, and permissions it stops sharing with other users of it.
///
/// Spindle's permission model is coarser than QEMU's: taking `write` or
/// `write-unchanged` fails on a read-only node as in QEMU ("Block node is
/// read-only"), and unsharing `write` or `resize` makes the image's file
/// lock refuse other writers (as the file under a format driver does); the
/// other permissions are accepted and validated only.
struct BlkdebugChildPermissions: Equatable {
  /// QEMU 7.2's `BlockPermission` names.
  static let names = ["consistent-read", "write", "write-unchanged", "resize"]

  /// Permissions to take in addition.
  var take: [String] = []
  /// Permissions not to share.
  var unshare: [String] = []

  /// Takes the `take-child-perms.N` and `unshare-child-perms.N` list entries
  /// out of `options` (anything else under those names stays, and is then
  /// reported as an unsupported option, as QEMU does); unknown permission
  /// names fail with QEMU's message.
  init(taking options: inout DriverOptions) throws {
    take = try Self.list(options.takeChild("take-child-perms"))
    unshare = try Self.list(options.takeChild("unshare-child-perms"))
  }

  private static func list(_ entries: DriverOptions) throws -> [String] {
    let ordered = entries.values.compactMap { key, value in Int(key).map { ($0, value) } }
      .sorted { $0.0 < $1.0 }
    for (_, value) in ordered where !names.contains(value) {
      throw BlockError(.invalidArgument, "Parameter 'null' does not accept value '\(value)'")
    }
    return ordered.map(\.1)
  }

  /// Refuses to take a write permission on a read-only node.
  func check(readOnly: Bool) throws {
    if readOnly && take.contains(where: { $0 == "write" || $0 == "write-unchanged" }) {
      throw BlockError(.permissionDenied, "Block node is read-only")
    }
  }

  /// Whether other users may still write to and resize the image.
  var sharesWrites: Bool { !unshare.contains("write") && !unshare.contains("resize") }
}
