import BlockCore
import Foundation
import Testing

@testable import BlockDrivers

/// One extent of `qemu-img map --output=json`.
struct MapEntry: Equatable, CustomStringConvertible {
  var start: Int64
  var length: Int64
  var depth: Int
  var present: Bool
  var zero: Bool
  var data: Bool
  var offset: Int64?

  var description: String {
    "{\(start)+\(length) depth \(depth)\(present ? " present" : "")\(zero ? " zero" : "")\(data ? " data" : "")\(offset.map { " @\($0)" } ?? "")}"
  }

  /// qemu-img map's merge rule: same kind, and contiguous in the file when mapped.
  func canAbsorb(_ next: MapEntry) -> Bool {
    depth == next.depth && present == next.present && zero == next.zero && data == next.data
      && (offset == nil) == (next.offset == nil)
      && (offset == nil || offset! + length == next.offset!)
  }
}

/// qemu-img and qemu-io driven helpers for the qcow2 interop tests.
enum QcowTools {
  /// Runs qemu-img; fails with its output when it exits non-zero.
  @discardableResult
  static func img(_ arguments: [String]) async throws -> String {
    let (status, output) = try await QEMUTools.run(QEMUTools.qemuImg, arguments)
    if status != 0 {
      throw BlockError(.ioError, "qemu-img \(arguments.joined(separator: " ")): \(output)")
    }
    return output
  }

  /// Runs qemu-io on a qcow2 image with the given commands.
  static func io(_ image: String, _ commands: [String], format: String = "qcow2") async throws {
    var arguments = ["-f", format]
    for command in commands { arguments += ["-c", command] }
    let (status, output) = try await QEMUTools.run(QEMUTools.qemuIO, arguments + [image])
    if status != 0 || output.contains("failed") {
      throw BlockError(.ioError, "qemu-io \(commands): \(output)")
    }
  }

  /// The image's guest contents, as qemu-img converts them to raw.
  static func guestBytes(_ image: String, scratch: ScratchDirectory) async throws -> [UInt8] {
    let raw = scratch.file("guest-\(UUID().uuidString).raw")
    try await img(["convert", "-O", "raw", image, raw])
    defer { try? FileManager.default.removeItem(atPath: raw) }
    return try contents(of: raw)
  }

  /// `qemu-img map --output=json` of the image.
  static func map(_ image: String) async throws -> [MapEntry] {
    let text = try await img(["map", "--output=json", image])
    let json = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]] ?? []
    return json.map { item in
      MapEntry(
        start: (item["start"] as? NSNumber)?.int64Value ?? -1,
        length: (item["length"] as? NSNumber)?.int64Value ?? -1,
        depth: (item["depth"] as? NSNumber)?.intValue ?? -1,
        present: item["present"] as? Bool ?? false,
        zero: item["zero"] as? Bool ?? false,
        data: item["data"] as? Bool ?? false,
        offset: (item["offset"] as? NSNumber)?.int64Value)
    }
  }
}

/// The map qemu-img would print for `node`, computed from Spindle's block
/// status the way qemu-img's `get_block_status` walks the backing chain.
@BlockActor
func spindleMap(_ node: BlockNode) async throws -> [MapEntry] {
  var entries: [MapEntry] = []
  var offset: Int64 = 0
  while offset < node.length {
    var layer: BlockNode? = node
    var depth = 0
    var bytes = node.length - offset
    var status = BlockStatus(flags: [], count: bytes)
    while let current = layer {
      status = try await current.blockStatus(offset: offset, bytes: bytes, wantZero: true)
      bytes = status.count
      if !status.flags.isDisjoint(with: [.data, .zero]) { break }
      guard let next = current.backing else {
        status.flags = []
        break
      }
      layer = next
      depth += 1
    }
    let entry = MapEntry(
      start: offset, length: bytes, depth: depth,
      present: status.flags.contains(.allocated), zero: status.flags.contains(.zero),
      data: status.flags.contains(.data),
      offset: status.flags.contains(.offsetValid) ? status.mapOffset : nil)
    if let last = entries.last, last.canAbsorb(entry) {
      entries[entries.count - 1].length += entry.length
    } else {
      entries.append(entry)
    }
    offset += bytes
  }
  return entries
}

/// Opens a qcow2 image through the opener (probing its format).
@BlockActor
func openQcow2(_ path: String, readOnly: Bool = true) async throws -> BlockNode {
  try await ImageOpener.open(
    filename: path, context: OpenContext(node: NodeOptions(readOnly: readOnly)))
}

/// Patches bytes of a file in place.
func patchFile(_ path: String, at offset: Int, _ bytes: [UInt8]) throws {
  var data = try contents(of: path)
  if data.count < offset + bytes.count {
    data += [UInt8](repeating: 0, count: offset + bytes.count - data.count)
  }
  data.replaceSubrange(offset..<offset + bytes.count, with: bytes)
  try Data(data).write(to: URL(fileURLWithPath: path))
}

/// `value` as `width` big-endian bytes.
func bigEndianBytes(_ value: UInt64, width: Int) -> [UInt8] {
  (0..<width).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64(width - 1 - $0))) }
}
