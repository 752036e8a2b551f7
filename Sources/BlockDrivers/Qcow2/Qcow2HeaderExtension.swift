import BlockCore

/// A header extension: a type, its data, kept verbatim when the type is unknown
/// so that rewriting the header preserves it (qcow2 spec, "Header extensions").
public struct Qcow2HeaderExtension: Sendable, Equatable {
  /// Backing file format name.
  public static let backingFormat: UInt32 = 0xE279_2ACA
  /// Feature name table.
  public static let featureNameTable: UInt32 = 0x6803_F857
  /// Bitmaps extension.
  public static let bitmaps: UInt32 = 0x2385_2875
  /// Full disk encryption header pointer.
  public static let encryption: UInt32 = 0x0537_BE77
  /// External data file name.
  public static let externalDataFile: UInt32 = 0x4441_5441

  /// The extension's type.
  public var type: UInt32
  /// The extension's data, without padding.
  public var data: [UInt8]

  /// Creates an extension.
  public init(type: UInt32, data: [UInt8]) {
    self.type = type
    self.data = data
  }

  /// Parses the extensions in `bytes[start..<end]` up to the end marker
  /// (QEMU's `qcow2_read_extensions`), validating each length: an
  /// extension whose 8-byte header or data crosses `end` is too large.
  /// Bytes past the end of `bytes` (of the file) read as zeroes.
  static func parseAll(_ bytes: [UInt8], from start: Int, to end: Int) throws
    -> [Qcow2HeaderExtension]
  {
    var extensions: [Qcow2HeaderExtension] = []
    var offset = start
    let bytes = bytes.count >= end ? bytes : bytes + [UInt8](repeating: 0, count: end - bytes.count)
    while offset < end {
      if end - offset < 8 {
        throw BlockError(.invalidArgument, "Header extension too large")
      }
      let type = bytes.uint32(at: offset)
      let length = Int(bytes.uint32(at: offset + 4))
      offset += 8
      // QEMU checks the length before the type, the end marker's too.
      if length > end - offset {
        throw BlockError(.invalidArgument, "Header extension too large")
      }
      if type == 0 { return extensions }
      if type == backingFormat && length >= 16 {
        throw BlockError(
          .invalidArgument, "ERROR: ext_backing_format: len=\(length) too large (>=16)")
      }
      extensions.append(
        Qcow2HeaderExtension(type: type, data: Array(bytes[offset..<offset + length])))
      offset += (length + 7) & ~7
    }
    return extensions
  }

  /// The extension on disk: type, length, data padded to 8 bytes.
  var encoded: [UInt8] {
    var bytes = [UInt8](repeating: 0, count: 8 + (data.count + 7) & ~7)
    bytes.setUInt32(type, at: 0)
    bytes.setUInt32(UInt32(data.count), at: 4)
    bytes.replaceSubrange(8..<8 + data.count, with: data)
    return bytes
  }

  /// The entries of a feature-name table extension (48 bytes each; a
  /// shorter last entry reads as padded with zeroes), up to the first with
  /// an empty name, as QEMU reads the table.
  var featureNames: [Qcow2FeatureName] {
    let padded = data + [UInt8](repeating: 0, count: 48)
    var names: [Qcow2FeatureName] = []
    for offset in stride(from: 0, to: data.count, by: 48) {
      let raw = padded[offset + 2..<offset + 48].prefix { $0 != 0 }
      if raw.isEmpty { break }
      guard let kind = Qcow2FeatureKind(rawValue: padded[offset]) else { continue }
      names.append(
        Qcow2FeatureName(
          kind: kind, bit: padded[offset + 1], name: String(decoding: raw, as: UTF8.self)))
    }
    return names
  }

  /// A feature-name table extension listing `names`.
  static func featureNameTable(_ names: [Qcow2FeatureName]) -> Qcow2HeaderExtension {
    var data = [UInt8](repeating: 0, count: 48 * names.count)
    for (index, entry) in names.enumerated() {
      data[48 * index] = entry.kind.rawValue
      data[48 * index + 1] = entry.bit
      let name = Array(entry.name.utf8.prefix(46))
      data.replaceSubrange(48 * index + 2..<48 * index + 2 + name.count, with: name)
    }
    return Qcow2HeaderExtension(type: featureNameTable, data: data)
  }
}
