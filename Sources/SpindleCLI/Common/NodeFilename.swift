import BlockCore
import BlockDrivers
import NBD

/// The names QEMU gives an opened graph: what `bdrv_refresh_filename`
/// makes of a node's file name and the folder `bdrv_dirname` resolves
/// relative backing file names against. Spindle knows them for graphs of
/// files, formats and filters; richer option sets have no such name.
@BlockActor
enum NodeFilename {
  /// The node's file name as QEMU shows it (`image:` of `info`): the file's
  /// path (with a `file:` prefix stripped), `blkdebug:CONFIG:IMAGE` for a
  /// blkdebug node, and a format's or filter's `file` child's name.
  static func name(of node: BlockNode) -> String? {
    if let file = node.driver as? FileDriver { return file.filename }
    if let nbd = node.driver as? NBDClientDriver, let name = nbd.config.filename { return name }
    if let options = jsonOptions(of: node) { return "json:" + QDictOrder.json(options) }
    guard let child = node.file, let childName = name(of: child) else { return nil }
    if let blkdebug = node.driver as? BlkdebugDriver {
      return "blkdebug:\(blkdebug.configFile ?? ""):\(childName)"
    }
    return childName
  }

  /// The options QEMU names a node by when it has no plain file name
  /// (`bdrv_refresh_filename`'s `json:` names): an rbd node's driver and
  /// strong options, and a format's over such a node with its `file`
  /// child's. Nil for nodes with plain names.
  static func jsonOptions(of node: BlockNode) -> [(String, QObject)]? {
    if let nbd = node.driver as? NBDClientDriver, case .fd(let descriptor) = nbd.config.server {
      // An inherited socket has no URL: the flat options name it.
      var options: [(String, QObject)] = [
        ("driver", .string("nbd")), ("server.type", .string("fd")),
        ("server.str", .string(descriptor)),
      ]
      if !nbd.config.export.isEmpty { options.append(("export", .string(nbd.config.export))) }
      return options
    }
    if let rbd = node.driver as? RBDDriver {
      // QEMU inserts the options first, then the driver.
      let options = rbd.location.strongOptions.sorted { $0.key < $1.key }
      return options.map { ($0.key, QObject.string($0.value)) } + [("driver", .string("rbd"))]
    }
    guard node.driver is RawDriver || node.driver is Qcow2Driver, let child = node.file,
      let inner = jsonOptions(of: child)
    else { return nil }
    return [("driver", .string(node.driver.formatName)), ("file", .dict(inner))]
  }

  /// The path of the file under `node` (through formats and filters) whose
  /// folder relative names are resolved against, as QEMU's `bdrv_dirname`
  /// follows a node's primary child down to the file.
  static func basePath(of node: BlockNode) -> String? {
    if let file = node.driver as? FileDriver { return file.filename }
    return node.file.flatMap(basePath(of:))
  }
}
