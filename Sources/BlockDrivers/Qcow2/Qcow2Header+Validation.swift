import BlockCore

extension Qcow2Header {
  /// Checks the parsed fields against each other and the file (QEMU's checks
  /// in `qcow2_do_open`, plus "lies past the end of the file" for the tables
  /// this driver reads). A check (`forCheck`) leaves the snapshot table to
  /// the check, as QEMU's `BDRV_O_CHECK` open does.
  func validate(fileLength: Int64, forCheck: Bool = false) throws {
    let unsupported = incompatibleFeatures & ~Qcow2Feature.supportedIncompatible
    if unsupported != 0 {
      throw Qcow2Feature.unsupportedError(unsupported, table: featureNames)
    }
    if refcountOrder > 6 {
      throw BlockError(
        .invalidArgument, "Reference count entry width too large; may not exceed 64 bits")
    }
    if cryptMethod > 2 {
      throw BlockError(.invalidArgument, "Unsupported encryption method: \(cryptMethod)")
    }
    if cryptMethod != 0 {
      throw BlockError(
        .notSupported,
        "qcow2: encrypted images (\(cryptMethod == 1 ? "aes" : "luks")) are not supported")
    }
    try validateCompressionType()
    if subclusterSize < 512 {
      throw BlockError(.invalidArgument, "Unsupported subcluster size: \(subclusterSize)")
    }
    for ext in extensions where ext.type == Qcow2HeaderExtension.backingFormat {
      if ext.data.count >= 16 {
        throw BlockError(
          .invalidArgument, "ERROR: ext_backing_format: len=\(ext.data.count) too large (>=16)")
      }
    }

    if refcountTableClusters == 0 {
      throw BlockError(.invalidArgument, "Image does not contain a reference count table")
    }
    if UInt64(refcountTableClusters) > Self.maxRefcountTableBytes >> UInt64(clusterBits) {
      throw BlockError(.invalidArgument, "Reference count table too large")
    }
    try validateTable(
      refcountTableOffset, entries: UInt64(refcountTableClusters), entryLength: UInt64(clusterSize),
      name: "Reference count table", fileLength: fileLength)

    if !forCheck {
      try validateSnapshotTable()
    }

    // QEMU's order: the L1 table's size and place, then whether the L1
    // index of the disk's end fits an int, then whether the table covers it.
    if UInt64(l1Size) > Self.maxL1Bytes / 8 {
      throw BlockError(.fileTooLarge, "Active L1 table too large")
    }
    try validateTable(
      l1TableOffset, entries: UInt64(l1Size), entryLength: 8, name: "Active L1 table",
      fileLength: fileLength)
    // QEMU's BDRV_MAX_LENGTH (BlockNode.maxLength, which is actor-isolated).
    let maxLength = UInt64(Int64.max / 2 - Int64.max / 2 % 512)
    if requiredL1Entries(for: size) > UInt64(Int32.max) || size > maxLength {
      throw BlockError(.fileTooLarge, "Image is too big")
    }
    if UInt64(l1Size) < requiredL1Entries(for: size) {
      throw BlockError(.invalidArgument, "L1 table is too small")
    }
  }

  /// L1 entries needed to map `size` bytes (QEMU's `size_to_l1`).
  func requiredL1Entries(for size: UInt64) -> UInt64 {
    let shift = UInt64(clusterBits) + UInt64(l2Bits)
    return (size >> shift) + (size & ((1 << shift) - 1) != 0 ? 1 : 0)
  }

  private func validateCompressionType() throws {
    switch compressionType {
    case 0:
      if incompatibleFeatures & Qcow2Feature.compressionType != 0 {
        throw BlockError(
          .invalidArgument, "qcow2: Compression type incompatible feature bit must not be set")
      }
    case 1:
      if incompatibleFeatures & Qcow2Feature.compressionType == 0 {
        throw BlockError(
          .invalidArgument, "qcow2: Compression type incompatible feature bit must be set")
      }
    default:
      throw BlockError(.notSupported, "qcow2: unknown compression type: \(compressionType)")
    }
  }

  /// QEMU's checks of the snapshot count and the snapshot table's place.
  func validateSnapshotTable() throws {
    if snapshotCount > Self.maxSnapshots {
      throw BlockError(.invalidArgument, "Snapshot table too large")
    }
    try validateTable(
      snapshotsOffset, entries: UInt64(snapshotCount), entryLength: 40, name: "Snapshot table",
      fileLength: nil)
  }

  /// QEMU's `validate_table_offset` and its message ("Active L1 table offset
  /// invalid"): cluster-aligned and without overflow; with `fileLength`, also
  /// within the file (Spindle's own check, so that a table is never read or
  /// allocated out of proportion to the file).
  private func validateTable(
    _ offset: UInt64, entries: UInt64, entryLength: UInt64, name: String, fileLength: Int64?
  ) throws {
    let invalid = BlockError(.invalidArgument, "\(name) offset invalid")
    if entries > UInt64(Int64.max) / entryLength { throw invalid }
    let bytes = entries * entryLength
    if UInt64(Int64.max) - bytes < offset { throw invalid }
    if offset & UInt64(clusterSize - 1) != 0 { throw invalid }
    if let fileLength, bytes > 0, offset + bytes > UInt64(fileLength) {
      throw BlockError(.invalidArgument, "\(name) lies past the end of the image")
    }
  }
}
