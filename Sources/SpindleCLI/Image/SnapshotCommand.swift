import BlockCore
import BlockDrivers

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// `qemu-img snapshot`, a qemu-img 7.2 work-alike:
///
///     snapshot [--object OBJECTDEF] [--image-opts] [-U] [-q]
///              [-l | -a SNAPSHOT | -c SNAPSHOT | -d SNAPSHOT] FILENAME
///
/// `-l` lists the snapshots (read-only open, `-U` allowed), `-c` creates one
/// named SNAPSHOT with the next free ID and the current date, `-a` applies
/// the snapshot with that ID or name, `-d` deletes the snapshot with that
/// name; without an action the image is only opened. Like qemu-img 7.2,
/// `-f` is not accepted. Formats without internal snapshots (raw) fail as
/// QEMU's do.
@BlockActor
enum SnapshotTool: ImageSubcommand {
  /// What the command does.
  enum Action {
    case list
    case create(String)
    case apply(String)
    case delete(String)
  }

  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("object", .required), .init("image-opts"),
    .init("force-share", key: "U"),
  ]

  static func parseAndRun(_ arguments: [String], reporter: Reporter, console: Console)
    async throws -> Int32
  {
    var parser = Getopt(arguments: arguments, options: ":la:c:d:hqU", longOptions: longOptions) {
      _ in
    }
    var action: Action?
    var imageOpts = false
    var forceShare = false
    var objects = ObjectRegistry()
    func setAction(_ new: Action) throws {
      guard action == nil else { throw reporter.usageError("Cannot mix '-l', '-a', '-c', '-d'") }
      action = new
    }
    while let result = parser.next() {
      let argument = parser.optarg ?? ""
      switch result {
      case .missingArgument, .invalid, .option("h"):
        throw reporter.sharedOptionExit(result, parser, console: console)
      case .option("l"): try setAction(.list)
      case .option("a"): try setAction(.apply(argument))
      case .option("c"): try setAction(.create(argument))
      case .option("d"): try setAction(.delete(argument))
      case .option("q"): break
      case .option("U"): forceShare = true
      case .option("image-opts"): imageOpts = true
      case .option("object"):
        try objects.add(argument, reporter: reporter, console: console)
      default:
        throw reporter.usageError("unrecognized option '\(parser.arguments[parser.optind - 1])'")
      }
    }
    guard parser.operands.count == 1, let filename = parser.operands.first else {
      throw reporter.usageError("Expecting one image file name")
    }
    var spec = ImageSpec()
    spec.node.readOnly = action.map { if case .list = $0 { true } else { false } } ?? false
    spec.forceShare = forceShare
    guard
      let backend = await openImage(filename, imageOpts: imageOpts, spec: spec, reporter: reporter)
    else { throw CommandExit() }
    if case .apply = action, !(backend.root.driver is Qcow2Driver) {
      // QEMU's fallback for formats without snapshots reopens the image
      // below, which warns about a probed raw image once more.
      var opened = spec
      opened.filename = imageOpts ? nil : filename
      if warnsAboutProbedRaw(opened, backend) {
        console.writeError(probedRawWarning(filename, backend: backend))
      }
    }
    let succeeded = await perform(action, on: backend.root, reporter: reporter, console: console)
    await backend.close()
    return succeeded ? 0 : 1
  }

  /// The name as qemu-img stores it: at most 255 bytes (QEMU copies it
  /// into `QEMUSnapshotInfo.name`, 256 bytes with the terminator). Spindle
  /// cuts at a character boundary where QEMU may cut a UTF-8 sequence.
  static func truncatedName(_ name: String) -> String {
    var result = ""
    var bytes = 0
    for scalar in name.unicodeScalars {
      bytes += String(scalar).utf8.count
      guard bytes <= 255 else { break }
      result.unicodeScalars.append(scalar)
    }
    return result
  }

  /// Runs `action` on the image's top node, reporting failures as
  /// qemu-img's `img_snapshot` does; returns whether it succeeded.
  private static func perform(
    _ action: Action?, on node: BlockNode, reporter: Reporter, console: Console
  ) async -> Bool {
    let qcow2 = node.driver as? Qcow2Driver
    if let rbd = rbdSnapshotDriver(of: node) {
      return await performOnRBD(action, rbd, reporter: reporter, console: console)
    }
    switch action {
    case nil:
      return true
    case .list:
      // Formats without snapshots list nothing (bdrv_snapshot_list fails).
      guard let qcow2, let snapshots = try? await qcow2.snapshots(node), !snapshots.isEmpty
      else { return true }
      writeTable(snapshots, to: console)
      return true
    case .create(let name):
      do {
        guard let qcow2 else { throw BlockError(.notSupported) }
        try await qcow2.createSnapshot(node, Qcow2SnapshotInfo(name: truncatedName(name)))
        return true
      } catch {
        reportCreateFailure(name, error, reporter: reporter)
        return false
      }
    case .apply(let name):
      do {
        guard let qcow2 else {
          throw BlockError(.notSupported, "Block driver does not support snapshots")
        }
        try qcow2.checkNoDirtyBitmaps(node)
        do {
          try await qcow2.applySnapshot(node, idOrName: name)
        } catch let error as BlockError {
          throw BlockError(error.code, "Failed to load snapshot: \(error.codeDescription)")
        }
        return true
      } catch {
        reporter.error("Could not apply snapshot '\(name)': \(errorMessage(error))")
        return false
      }
    case .delete(let name):
      // bdrv_snapshot_find: the first snapshot with that name.
      guard let qcow2, let snapshots = try? await qcow2.snapshots(node),
        let found = snapshots.first(where: { $0.name == name })
      else {
        reporter.error("Could not delete snapshot '\(name)': snapshot not found")
        return false
      }
      do {
        try await qcow2.deleteSnapshot(node, id: found.id, name: found.name)
        return true
      } catch {
        reporter.error("Could not delete snapshot '\(name)': \(errorMessage(error))")
        return false
      }
    }
  }

  /// `snapshot -l`'s table (QEMU's `dump_snapshots`).
  private static func writeTable(_ snapshots: [Qcow2SnapshotInfo], to console: Console) {
    var text = "Snapshot list:\n\(Qcow2SnapshotInfo.tableHeader)\n"
    for snapshot in snapshots { text += snapshot.tableLine + "\n" }
    console.write(text)
  }

  /// `snapshot -c`'s error: the negated errno and its text, as qemu-img.
  private static func reportCreateFailure(
    _ name: String, _ error: any Error, reporter: Reporter
  ) {
    let failure = error as? BlockError ?? BlockError(.ioError)
    reporter.error(
      "Could not create snapshot '\(name)': -\(failure.code.rawValue) (\(failure.codeDescription))"
    )
  }

  /// The rbd node whose snapshots the image's are: the node itself, or the
  /// `file` of a raw node (QEMU's `bdrv_snapshot_fallback` to the primary
  /// child of a format without snapshots).
  static func rbdSnapshotDriver(of node: BlockNode) -> RBDDriver? {
    if let rbd = node.driver as? RBDDriver { return rbd }
    guard node.driver is RawDriver else { return nil }
    return node.file?.driver as? RBDDriver
  }

  /// ``perform(_:on:reporter:console:)`` for librbd snapshots (QEMU's
  /// `qemu_rbd_snap_*` under `img_snapshot`).
  private static func performOnRBD(
    _ action: Action?, _ rbd: RBDDriver, reporter: Reporter, console: Console
  ) async -> Bool {
    switch action {
    case nil:
      return true
    case .list:
      guard let snapshots = try? await rbd.snapshots(), !snapshots.isEmpty else { return true }
      writeTable(snapshots, to: console)
      return true
    case .create(let name):
      do {
        try await rbd.createSnapshot(name: truncatedName(name))
        return true
      } catch {
        reportCreateFailure(name, error, reporter: reporter)
        return false
      }
    case .apply(let name):
      do {
        try await rbd.rollback(to: name)
        return true
      } catch {
        let failure = error as? BlockError ?? BlockError(.ioError)
        reporter.error(
          "Could not apply snapshot '\(name)': Failed to load snapshot: \(failure.codeDescription)")
        return false
      }
    case .delete(let name):
      guard let snapshots = try? await rbd.snapshots(),
        snapshots.contains(where: { $0.name == name })
      else {
        reporter.error("Could not delete snapshot '\(name)': snapshot not found")
        return false
      }
      do {
        try await rbd.deleteSnapshot(name: name)
        return true
      } catch {
        reporter.error("Could not delete snapshot '\(name)': \(errorMessage(error))")
        return false
      }
    }
  }
}
