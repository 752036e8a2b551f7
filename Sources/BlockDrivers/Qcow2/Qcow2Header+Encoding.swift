import BlockCore

extension Qcow2Header {
  /// Autoclear bits this implementation knows; the others are cleared
  /// whenever the header is written (qcow2 spec, "autoclear_features").
  public static let knownAutoclear: UInt64 = Qcow2Feature.bitmaps | Qcow2Feature.rawExternalData

  /// Order in which QEMU's `qcow2_update_header` writes the extensions it knows;
  /// unknown extensions follow in the order they were read.
  static let extensionOrder: [UInt32] = [
    Qcow2HeaderExtension.backingFormat, Qcow2HeaderExtension.externalDataFile,
    Qcow2HeaderExtension.encryption, Qcow2HeaderExtension.featureNameTable,
    Qcow2HeaderExtension.bitmaps,
  ]

  /// The header cluster as QEMU lays it out: fixed fields, extensions (known
  /// ones in QEMU's order, unknown ones preserved), the end marker, then the
  /// backing file name. Updates ``backingFileOffset`` and
  /// ``backingFileSize``; fails when it all does not fit in one cluster.
  public mutating func encode() throws -> [UInt8] {
    let clusterSize = Int(self.clusterSize)
    var bytes = [UInt8](repeating: 0, count: clusterSize)
    if version == 2 {
      headerLength = 72
    } else {
      autoclearFeatures &= Self.knownAutoclear
    }
    let known = Self.extensionOrder.flatMap { type in extensions.filter { $0.type == type } }
    let unknown = extensions.filter { !Self.extensionOrder.contains($0.type) }
    var position = Int(headerLength)
    for ext in known + unknown {
      let encoded = ext.encoded
      guard position + encoded.count + 8 <= clusterSize else {
        throw BlockError(.noSpace, "qcow2 header extensions do not fit in the first cluster")
      }
      bytes.replaceSubrange(position..<position + encoded.count, with: encoded)
      position += encoded.count
    }
    position += 8  // the end marker: eight zero bytes
    if let backingFile {
      let name = Array(backingFile.utf8)
      guard name.count <= Self.maxBackingNameLength, position + name.count <= clusterSize else {
        throw BlockError(.invalidArgument, "Backing file name too long")
      }
      bytes.replaceSubrange(position..<position + name.count, with: name)
      backingFileOffset = UInt64(position)
      backingFileSize = UInt32(name.count)
    } else {
      backingFileOffset = 0
      backingFileSize = 0
    }

    bytes.setUInt32(Self.magic, at: 0)
    bytes.setUInt32(version, at: 4)
    bytes.setUInt64(backingFileOffset, at: 8)
    bytes.setUInt32(backingFileSize, at: 16)
    bytes.setUInt32(clusterBits, at: 20)
    bytes.setUInt64(size, at: 24)
    bytes.setUInt32(cryptMethod, at: 32)
    bytes.setUInt32(l1Size, at: 36)
    bytes.setUInt64(l1TableOffset, at: 40)
    bytes.setUInt64(refcountTableOffset, at: 48)
    bytes.setUInt32(refcountTableClusters, at: 56)
    bytes.setUInt32(snapshotCount, at: 60)
    bytes.setUInt64(snapshotsOffset, at: 64)
    if version >= 3 {
      bytes.setUInt64(incompatibleFeatures, at: 72)
      bytes.setUInt64(compatibleFeatures, at: 80)
      bytes.setUInt64(autoclearFeatures, at: 88)
      bytes.setUInt32(refcountOrder, at: 96)
      bytes.setUInt32(headerLength, at: 100)
      if headerLength > 104 { bytes[104] = compressionType }
    }
    return bytes
  }
}
