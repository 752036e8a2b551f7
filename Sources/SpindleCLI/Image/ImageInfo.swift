import BlockCore
import BlockDrivers
import NBD

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// What `qemu-img info` reports about one image (QEMU's `ImageInfo`, the
/// members Spindle's formats have).
struct ImageInfo {
  var filename: String
  var format: String
  var virtualSize: Int64
  /// Bytes allocated to the image's file (`st_blocks * 512`), nil when unknown.
  var actualSize: Int64?
  var clusterSize: Int64?
  var dirty = false
  /// Whether the driver answers QEMU's `bdrv_get_info` (the `dirty-flag`
  /// member is shown only then): not an `nbd` node, nor raw over one.
  var hasDirtyFlag = true
  var backingFilename: String?
  var fullBackingFilename: String?
  var backingFormat: String?
  /// Internal snapshots, in table order.
  var snapshots: [Qcow2SnapshotInfo] = []
  /// `format-specific` data members, in QEMU's order.
  var formatSpecific: (type: String, data: [(String, QObject)])?

  /// The image as a JSON object, members in QEMU 7.2's order.
  var qobject: QObject {
    var members: [(String, QObject)] = []
    if let backingFormat { members.append(("backing-filename-format", .string(backingFormat))) }
    if !snapshots.isEmpty { members.append(("snapshots", .list(snapshots.map(\.qobject)))) }
    members.append(("virtual-size", .int(virtualSize)))
    members.append(("filename", .string(filename)))
    if let clusterSize { members.append(("cluster-size", .int(clusterSize))) }
    members.append(("format", .string(format)))
    // QEMU leaves an unknown size out (`has_actual_size`).
    if let actualSize { members.append(("actual-size", .int(actualSize))) }
    if let formatSpecific {
      members.append(
        (
          "format-specific",
          .dict([("type", .string(formatSpecific.type)), ("data", .dict(formatSpecific.data))])
        ))
    }
    if let fullBackingFilename {
      members.append(("full-backing-filename", .string(fullBackingFilename)))
    }
    if let backingFilename { members.append(("backing-filename", .string(backingFilename))) }
    if hasDirtyFlag { members.append(("dirty-flag", .bool(dirty))) }
    return .dict(members)
  }

  /// QEMU's `bdrv_image_info_dump`.
  var humanText: String {
    var text = """
      image: \(filename)
      file format: \(format)
      virtual size: \(qemuSizeText(UInt64(virtualSize))) (\(virtualSize) bytes)
      disk size: \(actualSize.map { qemuSizeText(UInt64($0)) } ?? "unavailable")

      """
    if let clusterSize { text += "cluster_size: \(clusterSize)\n" }
    if dirty { text += "cleanly shut down: no\n" }
    if let backingFilename {
      text += "backing file: \(backingFilename)"
      if let fullBackingFilename {
        if fullBackingFilename != backingFilename {
          text += " (actual path: \(fullBackingFilename))"
        }
      } else {
        text += " (cannot determine actual path)"
      }
      text += "\n"
    }
    if let backingFormat { text += "backing file format: \(backingFormat)\n" }
    if !snapshots.isEmpty {
      text += "Snapshot list:\n\(Qcow2SnapshotInfo.tableHeader)\n"
      for snapshot in snapshots { text += snapshot.tableLine + "\n" }
    }
    if let formatSpecific {
      text += "Format specific information:\n"
      text += QObject.dict(formatSpecific.data).humanDump(indentation: 1)
    }
    return text
  }
}

extension QObject {
  /// A scalar as QEMU's `dump_qobject` prints it.
  var humanValue: String {
    switch self {
    case .int(let value): String(value)
    case .bool(let value): value ? "true" : "false"
    case .string(let value): value
    case .dict, .list: prettyJSON()
    }
  }

  /// The members of a dict or the elements of a list as QEMU's `dump_qdict`
  /// and `dump_qlist` print them: four spaces per level, dashes in keys
  /// shown as spaces, composite values on the lines below their key.
  func humanDump(indentation: Int) -> String {
    let indent = String(repeating: " ", count: 4 * indentation)
    let entries: [(String, QObject)]
    switch self {
    case .dict(let members): entries = members.map { ($0.0.replacing("-", with: " "), $0.1) }
    case .list(let elements): entries = elements.enumerated().map { ("[\($0.offset)]", $0.element) }
    default: return humanValue
    }
    var text = ""
    for (label, value) in entries {
      switch value {
      case .dict, .list:
        text += "\(indent)\(label):\n" + value.humanDump(indentation: indentation + 1)
      default: text += "\(indent)\(label): \(value.humanValue)\n"
      }
    }
    return text
  }
}

/// QEMU's `size_to_str`: three significant digits and a binary unit
/// (`196 KiB`, `1.5 MiB`, `0 B`).
func qemuSizeText(_ value: UInt64) -> String {
  let suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
  var exponent: Int32 = 0
  _ = frexp(Double(value) / (1000.0 / 1024.0), &exponent)
  let index = max(0, Int((exponent - 1) / 10))
  let divisor = Double(UInt64(1) << UInt64(index * 10))
  return cFormat("%0.3g", Double(value) / divisor) + " \(suffixes[index])B"
}

/// A failure `info` reports as it is.
struct ImageInfoFailure: Error, CustomStringConvertible {
  let message: String
  /// QEMU reports it as failing to open the image.
  var isOpenFailure = false
  var description: String { message }
}

/// Gathers the information about an opened image (QEMU's
/// `bdrv_query_image_info`) from the root node of a graph opened without its
/// backing file.
@BlockActor
func collectImageInfo(_ backend: BlockBackend, filename: String) async throws -> ImageInfo {
  let root = backend.root
  var info = ImageInfo(
    filename: filename, format: root.driver.formatName, virtualSize: root.length)
  let fileNode = root.driver is FileDriver ? root : root.file
  let infoNode = root.driver is RawDriver ? root.file : root
  info.hasDirtyFlag = !(infoNode?.driver is NBDClientDriver)
  if let file = fileNode?.driver as? FileDriver {
    info.actualSize = await allocatedBytes(file.filename)
  }
  if let rbd = infoNode?.driver as? RBDDriver {
    // QEMU's `qemu_rbd_getinfo` (raw passes its file's on); the
    // format-specific data (encryption format only) is rbd's own.
    info.clusterSize = rbd.objectSize
    if root.driver is RBDDriver { info.formatSpecific = ("rbd", []) }
    // QEMU lists the snapshots of rbd (through raw's file child).
    info.snapshots = (try? await rbd.snapshots()) ?? []
  }
  guard let qcow2 = root.driver as? Qcow2Driver else { return info }
  let header = qcow2.header
  if header.cryptMethod != 0 {
    throw ImageInfoFailure(message: "encrypted images are not supported yet")
  }
  info.clusterSize = header.clusterSize
  info.dirty = header.incompatibleFeatures & 0x1 != 0
  if let backing = header.backingFile {
    info.backingFilename = backing
    // Relative to the folder of the file below the image (QEMU's
    // `bdrv_dirname`), not to the name shown.
    info.fullBackingFilename = fullBackingPath(
      backing, relativeTo: NodeFilename.basePath(of: root) ?? filename)
    info.backingFormat = header.backingFormat
  }
  var specific = qcow2SpecificInfo(header)
  if let file = root.file {
    info.snapshots = try await Qcow2SnapshotInfo.readAll(from: file, header: header)
    let bitmaps: [Qcow2BitmapInfo]
    do {
      bitmaps = try await Qcow2BitmapInfo.readAll(from: file, header: header)
    } catch {
      // QEMU checks the bitmap directory when it opens the image.
      throw ImageInfoFailure(message: errorMessage(error), isOpenFailure: true)
    }
    if !bitmaps.isEmpty, let index = specific.firstIndex(where: { $0.0 == "lazy-refcounts" }) {
      // QEMU's hash order puts the bitmaps right after lazy-refcounts.
      specific.insert(("bitmaps", .list(bitmaps.map(\.qobject))), at: index + 1)
    }
  }
  info.formatSpecific = ("qcow2", specific)
  return info
}

/// The `format-specific` members of a qcow2 image (QEMU's
/// `qcow2_get_specific_info`), in QEMU's order.
func qcow2SpecificInfo(_ header: Qcow2Header) -> [(String, QObject)] {
  if header.version >= 3 {
    var data: [(String, QObject)] = [
      ("compat", .string("1.1")),
      ("compression-type", .string(header.compressionType == 0 ? "zlib" : "zstd")),
      ("lazy-refcounts", .bool(header.compatibleFeatures & 0x1 != 0)),
      ("refcount-bits", .int(Int64(header.refcountBits))),
    ]
    if let name = header.dataFileName { data.append(("data-file", .string(name))) }
    if header.incompatibleFeatures & 0x4 != 0 {
      data.append(("data-file-raw", .bool(header.dataFileIsRaw)))
    }
    data += [
      ("corrupt", .bool(header.incompatibleFeatures & 0x2 != 0)),
      ("extended-l2", .bool(header.incompatibleFeatures & 0x10 != 0)),
    ]
    return data
  } else {
    return [
      ("compat", .string("0.10")),
      ("compression-type", .string("zlib")),
      ("refcount-bits", .int(Int64(header.refcountBits))),
    ]
  }
}

/// `st_blocks * 512` of a file, nil when it cannot be read.
private func allocatedBytes(_ path: String) async -> Int64? {
  await Task.detached {
    var status = stat()
    guard stat(path, &status) == 0 else { return nil }
    return Int64(status.st_blocks) * 512
  }.value
}
