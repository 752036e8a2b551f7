import BlockDrivers

/// `qemu-img check`'s report of a check result: QEMU's
/// `dump_human_image_check` and its JSON `ImageCheck` object.
struct CheckReport {
  let result: Qcow2CheckResult
  let filename: String
  let format: String

  /// The human-readable report.
  var human: String {
    var text = ""
    if result.corruptions == 0 && result.leaks == 0 && result.checkErrors == 0 {
      text += "No errors were found on the image.\n"
    } else {
      if result.corruptions != 0 {
        text +=
          "\n\(result.corruptions) errors were found on the image.\n"
          + "Data may be corrupted, or further writes to the image may corrupt it.\n"
      }
      if result.leaks != 0 {
        text +=
          "\n\(result.leaks) leaked clusters were found on the image.\n"
          + "This means waste of disk space, but no harm to data.\n"
      }
      if result.checkErrors != 0 {
        text += "\n\(result.checkErrors) internal errors have occurred during the check.\n"
      }
    }
    if result.totalClusters != 0 && result.allocatedClusters != 0 {
      let allocated = Double(result.allocatedClusters)
      text += cFormat(
        "%lld/%lld = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
        result.allocatedClusters, result.totalClusters,
        allocated * 100.0 / Double(result.totalClusters),
        Double(result.fragmentedClusters) * 100.0 / allocated,
        Double(result.compressedClusters) * 100.0 / allocated)
    }
    if result.imageEndOffset != 0 {
      text += "Image end offset: \(result.imageEndOffset)\n"
    }
    return text
  }

  /// The JSON report: optional members only when non-zero, in the order of
  /// QEMU's QDict hash buckets.
  var json: String {
    let optional: [(String, Int64)] = [
      ("image-end-offset", result.imageEndOffset),
      ("compressed-clusters", result.compressedClusters),
      ("total-clusters", result.totalClusters),
      ("corruptions", result.corruptions),
      ("corruptions-fixed", result.corruptionsFixed),
      ("check-errors", -1),
      ("leaks", result.leaks),
      ("leaks-fixed", result.leaksFixed),
      ("allocated-clusters", result.allocatedClusters),
      ("filename", -1),
      ("format", -1),
      ("fragmented-clusters", result.fragmentedClusters),
    ]
    var members: [(String, QObject)] = []
    for (key, value) in optional {
      switch key {
      case "check-errors": members.append((key, .int(result.checkErrors)))
      case "filename": members.append((key, .string(filename)))
      case "format": members.append((key, .string(format)))
      default: if value != 0 { members.append((key, .int(value))) }
      }
    }
    return QObject.dict(members).prettyJSON()
  }
}
