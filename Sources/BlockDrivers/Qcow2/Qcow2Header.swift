import BlockCore

/// The qcow2 header (first cluster of the image): the fixed fields, the
/// header extensions and the backing file name (qcow2 spec, "Header").
///
/// ``parse(_:fileLength:)`` validates every field the way QEMU's
/// `qcow2_do_open` does before anything is allocated from it, so a hostile
/// header yields a ``BlockError`` rather than a crash or a huge allocation.
public struct Qcow2Header: Sendable, Equatable {
  /// "QFI\xfb".
  public static let magic: UInt32 = 0x5146_49FB
  /// Largest L1 table QEMU accepts (`QCOW_MAX_L1_SIZE`, bytes).
  public static let maxL1Bytes: UInt64 = 32 << 20
  /// Largest refcount table QEMU accepts (`QCOW_MAX_REFTABLE_SIZE`, bytes).
  public static let maxRefcountTableBytes: UInt64 = 8 << 20
  /// Most snapshots QEMU accepts (`QCOW_MAX_SNAPSHOTS`).
  public static let maxSnapshots: UInt32 = 65536
  /// Longest backing file name QEMU accepts.
  public static let maxBackingNameLength = 1023

  /// 2 (compat=0.10) or 3 (compat=1.1).
  public var version: UInt32 = 3
  /// Where the backing file name is, 0 when there is none.
  public var backingFileOffset: UInt64 = 0
  /// Length of the backing file name.
  public var backingFileSize: UInt32 = 0
  /// log2 of the cluster size (9 to 21).
  public var clusterBits: UInt32 = 16
  /// Virtual disk size in bytes.
  public var size: UInt64 = 0
  /// 0 none, 1 AES, 2 LUKS.
  public var cryptMethod: UInt32 = 0
  /// Entries in the active L1 table.
  public var l1Size: UInt32 = 0
  /// Where the active L1 table is.
  public var l1TableOffset: UInt64 = 0
  /// Where the refcount table is.
  public var refcountTableOffset: UInt64 = 0
  /// Clusters the refcount table occupies.
  public var refcountTableClusters: UInt32 = 0
  /// Number of snapshots.
  public var snapshotCount: UInt32 = 0
  /// Where the snapshot table is.
  public var snapshotsOffset: UInt64 = 0
  /// Incompatible feature bits (v3).
  public var incompatibleFeatures: UInt64 = 0
  /// Compatible feature bits (v3).
  public var compatibleFeatures: UInt64 = 0
  /// Autoclear feature bits (v3).
  public var autoclearFeatures: UInt64 = 0
  /// log2 of the refcount width in bits (0 to 6; 4 for v2).
  public var refcountOrder: UInt32 = 4
  /// Length of the fixed header (72 for v2, at least 104 for v3).
  public var headerLength: UInt32 = 112
  /// 0 zlib, 1 zstd.
  public var compressionType: UInt8 = 0
  /// Header extensions in file order, unknown ones preserved.
  public var extensions: [Qcow2HeaderExtension] = []
  /// The backing file name, if any.
  public var backingFile: String?

  /// An empty header; callers set the fields.
  public init() {}

  /// The cluster size in bytes.
  public var clusterSize: Int64 { 1 << Int64(clusterBits) }
  /// Whether L2 entries are 128 bits with subcluster bitmaps (incompatible
  /// bit 4).
  public var extendedL2: Bool { incompatibleFeatures & Qcow2Feature.extendedL2 != 0 }
  /// 64-bit words per L2 entry: 2 with extended L2 entries, else 1.
  var l2EntryWords: Int { extendedL2 ? 2 : 1 }
  /// Entries of an L2 table.
  public var l2Entries: Int64 { clusterSize / Int64(8 * l2EntryWords) }
  /// log2 of ``l2Entries``.
  var l2Bits: Int64 { Int64(clusterBits) - (extendedL2 ? 4 : 3) }
  /// Subclusters per cluster: 32 with extended L2 entries, else 1.
  var subclustersPerCluster: Int { extendedL2 ? 32 : 1 }
  /// The subcluster size in bytes (the cluster size without extended L2).
  public var subclusterSize: Int64 { clusterSize / Int64(subclustersPerCluster) }
  /// The refcount width in bits.
  public var refcountBits: Int { 1 << Int(refcountOrder) }
  /// The compression method of compressed clusters (validated at parse).
  var compression: Qcow2CompressionType { Qcow2CompressionType(rawValue: compressionType) ?? .zlib }

  /// The backing format extension's value, if present (the last one when
  /// there are several, as QEMU reads them).
  public var backingFormat: String? {
    extensions.last { $0.type == Qcow2HeaderExtension.backingFormat }.map {
      String(decoding: $0.data.prefix { $0 != 0 }, as: UTF8.self)
    }
  }

  /// The feature-name table stored in the image (empty when absent; the
  /// last one when there are several, as QEMU reads them).
  public var featureNames: [Qcow2FeatureName] {
    extensions.last { $0.type == Qcow2HeaderExtension.featureNameTable }?.featureNames ?? []
  }

  /// Parses and validates the header from the image's first bytes (at least
  /// the whole first cluster, or the whole file when it is shorter).
  public static func parse(_ bytes: [UInt8], fileLength: Int64, forCheck: Bool = false) throws
    -> Qcow2Header
  {
    guard bytes.count >= 72, bytes.uint32(at: 0) == magic else {
      throw BlockError(.invalidArgument, "Image is not in qcow2 format")
    }
    var header = Qcow2Header()
    header.version = bytes.uint32(at: 4)
    guard header.version == 2 || header.version == 3 else {
      throw BlockError(.notSupported, "Unsupported qcow2 version \(header.version)")
    }
    header.backingFileOffset = bytes.uint64(at: 8)
    header.backingFileSize = bytes.uint32(at: 16)
    header.clusterBits = bytes.uint32(at: 20)
    header.size = bytes.uint64(at: 24)
    header.cryptMethod = bytes.uint32(at: 32)
    header.l1Size = bytes.uint32(at: 36)
    header.l1TableOffset = bytes.uint64(at: 40)
    header.refcountTableOffset = bytes.uint64(at: 48)
    header.refcountTableClusters = bytes.uint32(at: 56)
    header.snapshotCount = bytes.uint32(at: 60)
    header.snapshotsOffset = bytes.uint64(at: 64)
    guard (9...21).contains(header.clusterBits) else {
      throw BlockError(.invalidArgument, "Unsupported cluster size: 2^\(header.clusterBits)")
    }
    if header.version == 2 {
      header.headerLength = 72
      header.refcountOrder = 4
    } else {
      header.incompatibleFeatures = bytes.uint64(at: 72)
      header.compatibleFeatures = bytes.uint64(at: 80)
      header.autoclearFeatures = bytes.uint64(at: 88)
      header.refcountOrder = bytes.uint32(at: 96)
      header.headerLength = bytes.uint32(at: 100)
      if header.headerLength < 104 {
        throw BlockError(.invalidArgument, "qcow2 header too short")
      }
      if header.headerLength > 104 { header.compressionType = bytes[104] }
    }
    let clusterSize = UInt64(header.clusterSize)
    if UInt64(header.headerLength) > clusterSize {
      throw BlockError(.invalidArgument, "qcow2 header exceeds cluster size")
    }
    if header.backingFileOffset > clusterSize {
      throw BlockError(.invalidArgument, "Invalid backing file offset")
    }
    let extensionsEnd = header.backingFileOffset != 0 ? header.backingFileOffset : clusterSize
    header.extensions = try Qcow2HeaderExtension.parseAll(
      bytes, from: Int(header.headerLength), to: Int(extensionsEnd))
    if header.backingFileOffset != 0 && header.backingFileSize != 0 {
      let length = Int(header.backingFileSize)
      let start = Int(header.backingFileOffset)
      if length > min(maxBackingNameLength, Int(clusterSize) - start) {
        throw BlockError(.invalidArgument, "Backing file name too long")
      }
      guard start + length <= bytes.count else {
        throw BlockError(.invalidArgument, "Backing file name lies past the end of the image")
      }
      header.backingFile = String(decoding: bytes[start..<start + length], as: UTF8.self)
    }
    try header.validate(fileLength: fileLength, forCheck: forCheck)
    return header
  }
}
