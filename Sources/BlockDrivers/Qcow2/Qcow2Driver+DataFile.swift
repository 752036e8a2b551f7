import BlockCore

extension Qcow2Header {
  /// The external data file name from its header extension, if present.
  public var dataFileName: String? {
    extensions.first { $0.type == Qcow2HeaderExtension.externalDataFile }.map {
      String(decoding: $0.data.prefix { $0 != 0 }, as: UTF8.self)
    }
  }

  /// Whether the external data file is kept valid as a raw image (autoclear
  /// bit 1, `data_file_raw`).
  public var dataFileIsRaw: Bool { autoclearFeatures & Qcow2Feature.rawExternalData != 0 }
}

extension Qcow2Driver {
  /// Opens the external data file of an image that has one (QEMU's
  /// `qcow2_do_open`): the `data-file` options when given, else the name in
  /// the header, relative names resolved against the image's folder (as
  /// backing names are; QEMU 7.2 itself resolves them against the working
  /// directory). An image without the feature refuses a `data-file` option,
  /// and a raw-data-file bit without a data file.
  static func openDataFile(
    header: Qcow2Header, override: DriverOptions?, imagePath: String?, context: OpenContext
  ) async throws -> BlockNode? {
    guard header.incompatibleFeatures & Qcow2Feature.externalDataFile != 0 else {
      if override != nil {
        throw BlockError(
          .invalidArgument, "'data-file' can only be set for images with an external data file")
      }
      if header.dataFileIsRaw {
        throw BlockError(.invalidArgument, "data-file-raw requires a data file")
      }
      return nil
    }
    var child: DriverOptions
    if let override {
      child = override
    } else if let name = header.dataFileName {
      child = DriverOptions(["filename": resolveBackingName(name, relativeTo: imagePath)])
    } else {
      throw BlockError(.invalidArgument, "'data-file' is required for this image")
    }
    return try await ImageOpener.openChild(&child, role: "data-file", context: context)
  }

  /// The `data-file` options of an open: `data-file.KEY=...`, or
  /// `data-file=NAME` for a file name; nil when none is given.
  static func takeDataFileOptions(_ options: inout DriverOptions) -> DriverOptions? {
    var child = options.takeChild("data-file")
    if let name = options.take("data-file") { child["filename"] = name }
    return child.isEmpty ? nil : child
  }

  /// Passes the discard of dropped data clusters down to the data file when
  /// the node lets discards through (QEMU's `qcow2_free_any_cluster` for an
  /// image with a data file: no refcounts to drop). Advisory: failures are
  /// ignored, as in QEMU.
  func discardInDataFile(_ node: BlockNode, _ ranges: [(Int64, Int64)]) async throws {
    guard node.options.discard == .unmap else { return }
    let data = try dataNode(node)
    for (offset, bytes) in ranges {
      try? await data.discard(at: offset, count: bytes)
    }
  }

  /// Zeroes the data file under a zero-write when it must stay a valid raw
  /// image (QEMU's `qcow2_subcluster_zeroize` with `data_file_raw`).
  func zeroRawDataFile(_ node: BlockNode, offset: Int64, length: Int64, flags: RequestFlags)
    async throws
  {
    guard hasDataFile && header.dataFileIsRaw else { return }
    let end = min(offset + length, Int64(header.size))
    guard end > offset else { return }
    try await dataNode(node).writeZeroes(at: offset, count: end - offset, flags: flags)
  }

  /// Maps every guest cluster to the same offset of the data file, as
  /// QEMU's metadata preallocation does for `data_file_raw` images: L2
  /// tables allocated in guest order, every entry COPIED data at its guest
  /// offset.
  func mapWholeDataFile(_ node: BlockNode) async throws {
    let file = try fileNode(node)
    try await lock.withLock {
      let clusterSize = header.clusterSize
      let clusters = (Int64(header.size) + clusterSize - 1) / clusterSize
      var cluster: Int64 = 0
      while cluster < clusters {
        let l2Offset = try await l2TableForWrite(node, offset: cluster * clusterSize)
        let first = Int(cluster & (header.l2Entries - 1))
        let count = Int(min(clusters - cluster, header.l2Entries - Int64(first)))
        let entries = (0..<count).map {
          UInt64((cluster + Int64($0)) * clusterSize) | Qcow2Entry.copied
        }
        // QEMU's preallocation leaves extended L2 bitmaps empty.
        try await writeL2Entries(node, l2Offset: l2Offset, first: first, entries)
        cluster += Int64(count)
      }
      try await file.flush()
    }
  }
}
