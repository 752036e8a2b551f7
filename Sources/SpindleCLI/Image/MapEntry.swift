import BlockCore
import BlockDrivers
import NBD

/// One run of `qemu-img map` (QEMU's `MapEntry`).
struct MapEntry: Equatable {
  var start: Int64
  var length: Int64
  var data = false
  var zero = false
  /// Where the run is in `filename` (nil: not known).
  var offset: Int64?
  /// How many backing layers down the answer came from (0: the top image).
  var depth = 0
  /// Whether some layer of the chain holds the run.
  var present = false
  /// The file holding the data, when the offset is known.
  var filename: String?

  /// QEMU's `entry_mergeable`: `next` continues this run.
  func mergeable(with next: MapEntry) -> Bool {
    guard length > 0, zero == next.zero, data == next.data, depth == next.depth,
      present == next.present, filename == next.filename, (offset == nil) == (next.offset == nil)
    else { return false }
    if let offset, offset + length != next.offset { return false }
    return true
  }

  /// The entry as one line of `--output=json` (without separator).
  var json: String {
    var text =
      "{ \"start\": \(start), \"length\": \(length), \"depth\": \(depth), \"present\": \(present), \"zero\": \(zero), \"data\": \(data)"
    if let offset { text += ", \"offset\": \(offset)" }
    return text + "}"
  }

  /// The entry as a line of human output (only data that is not zero).
  var humanLine: String {
    cFormat("%#-16llx%#-16llx%#-16llx", start, length, offset ?? 0) + (filename ?? "") + "\n"
  }
}

/// QEMU's `get_block_status` for `qemu-img map`: asks each layer of the chain
/// in turn, from `node` down, until one says the range is data or zeroes.
@BlockActor
func mapEntry(_ node: BlockNode, offset: Int64, bytes: Int64) async throws -> MapEntry {
  var layer = node
  var depth = 0
  var count = bytes
  var status: BlockStatus
  while true {
    status = try await layer.blockStatus(offset: offset, bytes: count, wantZero: true)
    count = status.count
    if !status.flags.isDisjoint(with: [.data, .zero]) { break }
    guard let below = layer.backing else {
      status.flags = []
      break
    }
    layer = below
    depth += 1
  }
  let hasOffset = status.flags.contains(.offsetValid)
  var filename: String?
  if hasOffset, let file = status.file?.driver as? FileDriver {
    filename = file.filename
  } else if hasOffset, let nbd = status.file?.driver as? NBDClientDriver {
    filename = nbd.config.filename
  } else if hasOffset, let file = status.file, file.driver is RBDDriver {
    filename = NodeFilename.name(of: file)
  }
  return MapEntry(
    start: offset, length: count, data: status.flags.contains(.data),
    zero: status.flags.contains(.zero), offset: hasOffset ? status.mapOffset : nil, depth: depth,
    present: status.flags.contains(.allocated), filename: filename)
}
