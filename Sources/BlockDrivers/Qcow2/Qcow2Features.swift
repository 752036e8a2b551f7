import BlockCore

/// The three qcow2 v3 feature bitmaps and the feature-name table's vocabulary.
public enum Qcow2FeatureKind: UInt8, Sendable {
  /// Bits an implementation must understand to open the image.
  case incompatible = 0
  /// Bits an implementation may ignore.
  case compatible = 1
  /// Bits an implementation that does not understand them must clear when it
  /// writes the image.
  case autoclear = 2
}

/// One entry of the feature-name table header extension (48 bytes on disk).
public struct Qcow2FeatureName: Sendable, Equatable {
  /// Which bitmap the bit belongs to.
  public var kind: Qcow2FeatureKind
  /// The bit number (0-63).
  public var bit: UInt8
  /// The feature's name, at most 46 bytes.
  public var name: String

  /// Creates an entry.
  public init(kind: Qcow2FeatureKind, bit: UInt8, name: String) {
    self.kind = kind
    self.bit = bit
    self.name = name
  }
}

/// Feature bits Spindle knows (QEMU 7.2's `QCOW2_*_FEAT_*`).
public enum Qcow2Feature {
  /// Incompatible bit 0: refcounts may be inconsistent (lazy refcounts in use).
  public static let dirty: UInt64 = 1 << 0
  /// Incompatible bit 1: metadata is corrupt; open read-only only.
  public static let corrupt: UInt64 = 1 << 1
  /// Incompatible bit 2: guest data lives in an external data file.
  public static let externalDataFile: UInt64 = 1 << 2
  /// Incompatible bit 3: the compression type field is not zlib.
  public static let compressionType: UInt64 = 1 << 3
  /// Incompatible bit 4: L2 entries are 128 bits with subcluster bitmaps.
  public static let extendedL2: UInt64 = 1 << 4
  /// Compatible bit 0: lazy refcounts.
  public static let lazyRefcounts: UInt64 = 1 << 0
  /// Autoclear bit 0: the bitmaps extension is consistent.
  public static let bitmaps: UInt64 = 1 << 0
  /// Autoclear bit 1: the external data file is a raw image.
  public static let rawExternalData: UInt64 = 1 << 1

  /// Incompatible bits this driver can open images with.
  public static let supportedIncompatible: UInt64 =
    dirty | corrupt | externalDataFile | compressionType | extendedL2

  /// The feature-name table QEMU 7.2 writes, in its order.
  public static let nameTable: [Qcow2FeatureName] = [
    Qcow2FeatureName(kind: .incompatible, bit: 0, name: "dirty bit"),
    Qcow2FeatureName(kind: .incompatible, bit: 1, name: "corrupt bit"),
    Qcow2FeatureName(kind: .incompatible, bit: 2, name: "external data file"),
    Qcow2FeatureName(kind: .incompatible, bit: 3, name: "compression type"),
    Qcow2FeatureName(kind: .incompatible, bit: 4, name: "extended L2 entries"),
    Qcow2FeatureName(kind: .compatible, bit: 0, name: "lazy refcounts"),
    Qcow2FeatureName(kind: .autoclear, bit: 0, name: "bitmaps"),
    Qcow2FeatureName(kind: .autoclear, bit: 1, name: "raw external data"),
  ]

  /// The error QEMU reports for incompatible bits it cannot handle
  /// (`report_unsupported_feature`): names from the image's own feature-name
  /// table, then any bits left without a name.
  public static func unsupportedError(_ mask: UInt64, table: [Qcow2FeatureName]) -> BlockError {
    var remaining = mask
    var parts: [String] = []
    for entry in table where entry.kind == .incompatible && entry.bit < 64 {
      let bit = UInt64(1) << UInt64(entry.bit)
      if remaining & bit != 0 {
        parts.append(entry.name)
        remaining &= ~bit
      }
    }
    if remaining != 0 {
      parts.append("Unknown incompatible feature: \(String(remaining, radix: 16))")
    }
    return BlockError(
      .notSupported, "Unsupported qcow2 feature(s): \(parts.joined(separator: ", "))")
  }
}
