import BlockCore
import BlockDrivers

/// qemu-img's `-l` of `convert` and `measure`: `snapshot.id=ID,snapshot.name=NAME`
/// (either or both) selects a snapshot by its fields, anything else is a
/// snapshot ID or name. The chosen snapshot is loaded into the read-only
/// source node (QEMU's `bdrv_snapshot_load_tmp` and
/// `bdrv_snapshot_load_tmp_by_id_or_name`).
struct InternalSnapshotOption {
  /// `snapshot.id` / `snapshot.name`, when given in the option form.
  var id: String?
  var name: String?
  /// The plain form's ID or name; nil for the option form.
  var idOrName: String?

  /// Parses `-l`'s argument; nil after printing QEMU's errors (qemu-nbd
  /// quotes the argument `like this', qemu-img 'like this').
  @BlockActor
  static func parse(_ text: String, reporter: Reporter, openingQuote: String = "'")
    -> InternalSnapshotOption?
  {
    guard text.hasPrefix("snapshot.") else { return InternalSnapshotOption(idOrName: text) }
    let options = parseOptionString(text, reporter: reporter)
    let unknown = options.values.keys.filter { $0 != "snapshot.id" && $0 != "snapshot.name" }
    if let first = unknown.min(by: {
      (text.range(of: $0)?.lowerBound ?? text.endIndex)
        < (text.range(of: $1)?.lowerBound ?? text.endIndex)
    }) {
      reporter.error("Invalid parameter '\(first)'")
      reporter.error("Failed in parsing snapshot param \(openingQuote)\(text)'")
      return nil
    }
    return InternalSnapshotOption(
      id: options.values["snapshot.id"], name: options.values["snapshot.name"])
  }

  /// Whether the plain form was used (it refuses several sources).
  var isPlainName: Bool { idOrName != nil }

  /// Loads the snapshot into `node` (opened read-only); the error's message
  /// is QEMU's (printed after "Failed to load snapshot: ").
  @BlockActor
  func load(into node: BlockNode) async throws {
    guard let qcow2 = node.driver as? Qcow2Driver else {
      throw BlockError(
        .notSupported,
        "Block format '\(node.driver.formatName)' used by device '' does not support temporarily loading internal snapshots"
      )
    }
    if let idOrName {
      do {
        try await qcow2.loadSnapshotReadOnly(node, id: idOrName, name: nil)
      } catch let error as BlockError where error.code == .noSuchFileOrDirectory {
        try await qcow2.loadSnapshotReadOnly(node, id: nil, name: idOrName)
      }
    } else {
      try await qcow2.loadSnapshotReadOnly(node, id: id, name: name)
    }
  }
}
