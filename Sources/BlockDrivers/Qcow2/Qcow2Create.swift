import BlockCore
import SystemPackage

/// Options of ``Qcow2Create`` (QEMU's `BlockdevCreateOptionsQcow2`).
public struct Qcow2CreateOptions: Sendable, Equatable {
  /// Virtual disk size in bytes (a multiple of 512).
  public var size: Int64
  /// `compat`: "1.1" (version 3, the default) or "0.10" (version 2).
  public var compat: String = "1.1"
  /// Cluster size in bytes: a power of two from 512 to 2 MiB.
  public var clusterSize: Int64 = 65536
  /// Refcount width in bits: a power of two up to 64 (16 for compat 0.10).
  public var refcountBits: Int = 16
  /// Whether to set the lazy refcounts compatible feature (compat 1.1).
  public var lazyRefcounts = false
  /// The backing file name stored in the header, as given.
  public var backingFile: String?
  /// The backing format stored in the backing format extension.
  public var backingFormat: String?
  /// How the disk's clusters are allocated (QEMU's `preallocation`).
  public var preallocation: PreallocationMode = .off
  /// `compression_type`: zstd needs compat 1.1 and sets incompatible bit 3.
  public var compressionType: Qcow2CompressionType = .zlib
  /// `extended_l2`: 128-bit L2 entries with 32 subclusters per cluster
  /// (compat 1.1, clusters of at least 16 KiB).
  public var extendedL2 = false
  /// `data_file`: guest data goes to this file (created, or emptied, with the
  /// image; a relative name is relative to the image's folder).
  public var dataFile: String?
  /// `data_file_raw`: keep the data file a valid raw image (every cluster
  /// mapped to its own offset, as QEMU's metadata preallocation does).
  public var dataFileRaw = false

  /// Options for a disk of `size` bytes with qemu-img's defaults.
  public init(size: Int64) { self.size = size }
}

/// Creates qcow2 images laid out exactly as `qemu-img create -f qcow2` lays
/// them out (QEMU's `qcow2_co_create`): the header in cluster 0, a
/// one-cluster refcount table in cluster 1, its first refcount block in
/// cluster 2, the L1 table from cluster 3 (and, for images whose metadata
/// outgrows that block, what QEMU's allocator adds), and the file ending
/// where the L1 table ends.
@BlockActor
public enum Qcow2Create {
  /// Creates (or truncates) the file at `path` and writes an empty image.
  ///
  /// When all the metadata fits the first refcount block the image is written
  /// in one go; otherwise, as QEMU does, an empty image is written and then
  /// grown to its size through the driver, whose allocator lays out the L1
  /// table and the extra refcount blocks.
  public static func create(at path: String, options: Qcow2CreateOptions) async throws {
    _ = try header(for: options)
    let image: [UInt8]
    var growTo: Int64?
    do {
      image = try layout(options)
    } catch let error as BlockError where error.code == BlockError.notSupportedCode {
      var empty = options
      empty.size = 0
      image = try layout(empty)
      growTo = options.size
    }
    try await FileIOPool.run {
      let descriptor = try FileDescriptor.open(
        FilePath(path), .writeOnly, options: [.create, .truncate],
        permissions: [.ownerReadWrite, .groupRead, .otherRead])
      try descriptor.close()
    }
    var fileOptions = DriverOptions()
    fileOptions["driver"] = "file"
    fileOptions["filename"] = path
    let file = try await ImageOpener.open(filename: nil, options: fileOptions)
    do {
      try await file.write(at: 0, bytes: image)
      try await file.flush()
      if let dataFile = options.dataFile {
        try await createDataFile(
          Qcow2Driver.resolveBackingName(dataFile, relativeTo: path), size: options.size)
      }
    } catch {
      await file.close()
      throw error
    }
    guard growTo != nil || options.preallocation != .off || options.dataFileRaw else {
      await file.close()
      return
    }
    let node = try await Qcow2Driver.open(over: file, imagePath: path, context: OpenContext())
    do {
      if let growTo {
        try await node.truncate(to: growTo, preallocation: options.preallocation)
      } else if options.preallocation != .off, let driver = node.driver as? Qcow2Driver {
        // The image already has its size and L1 table, as QEMU's grow from
        // zero would have laid them out: only the clusters remain.
        try await driver.preallocate(
          node, from: 0, to: options.size, mode: options.preallocation)
      }
    } catch let error as BlockError {
      await node.close()
      // QEMU's qcow2_co_create words a failed truncate so.
      throw BlockError(error.code, "Could not resize image: \(error)")
    } catch {
      await node.close()
      throw error
    }
    do {
      if options.dataFileRaw, let driver = node.driver as? Qcow2Driver {
        try await driver.mapWholeDataFile(node)
      }
    } catch {
      await node.close()
      throw error
    }
    await node.close()
  }

  /// The image's bytes, validated as QEMU validates the options.
  nonisolated static func layout(_ options: Qcow2CreateOptions) throws -> [UInt8] {
    var header = try header(for: options)
    let clusterSize = Int(header.clusterSize)
    let l1Entries = Int(header.requiredL1Entries(for: header.size))
    if UInt64(l1Entries) > Qcow2Header.maxL1Bytes / 8 {
      throw BlockError(.fileTooLarge, "Image size is too large for this cluster size")
    }
    let l1Clusters = (l1Entries * 8 + clusterSize - 1) / clusterSize
    var refcounts = Qcow2RefcountBlock(clusterSize: clusterSize, bits: header.refcountBits)
    if 3 + l1Clusters > refcounts.count {
      throw BlockError.notSupported(
        "qcow2: images whose metadata needs more than one refcount block cannot be created yet")
    }
    for cluster in 0..<3 + l1Clusters { refcounts[cluster] = 1 }
    header.l1Size = UInt32(l1Entries)
    header.l1TableOffset = l1Entries > 0 ? UInt64(3 * clusterSize) : 0
    header.refcountTableOffset = UInt64(clusterSize)
    header.refcountTableClusters = 1

    var image = try header.encode()
    var refcountTable = [UInt8](repeating: 0, count: clusterSize)
    refcountTable.setUInt64(UInt64(2 * clusterSize), at: 0)
    image += refcountTable
    image += refcounts.bytes
    image += [UInt8](repeating: 0, count: l1Entries * 8)
    return image
  }

  /// The header for `options`, with QEMU's option checks.
  nonisolated static func header(for options: Qcow2CreateOptions) throws -> Qcow2Header {
    var header = Qcow2Header()
    switch options.compat {
    case "0.10", "v2": header.version = 2
    case "1.1", "v3": header.version = 3
    default:
      throw BlockError(.invalidArgument, "Invalid parameter '\(options.compat)'")
    }
    let clusterSize = options.clusterSize
    guard clusterSize >= 512, clusterSize <= 2 << 20, clusterSize & (clusterSize - 1) == 0 else {
      throw BlockError(
        .invalidArgument, "Cluster size must be a power of two between 512 and 2048k")
    }
    if options.extendedL2 {
      if header.version < 3 {
        throw BlockError(
          .invalidArgument,
          "Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)"
        )
      }
      if clusterSize < 16384 {
        throw BlockError(
          .invalidArgument,
          "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes")
      }
      header.incompatibleFeatures |= Qcow2Feature.extendedL2
    }
    if options.size < 0 || options.size % 512 != 0 {
      throw BlockError(.invalidArgument, "Image size must be a multiple of 512 bytes")
    }
    let bits = options.refcountBits
    guard bits > 0, bits <= 64, bits & (bits - 1) == 0 else {
      throw BlockError(
        .invalidArgument, "Refcount width must be a power of two and may not exceed 64 bits")
    }
    if header.version == 2 && bits != 16 {
      throw BlockError(
        .invalidArgument,
        "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"
      )
    }
    if header.version == 2 && options.lazyRefcounts {
      throw BlockError(
        .invalidArgument,
        "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"
      )
    }
    if options.compressionType != .zlib && header.version < 3 {
      throw BlockError(
        .invalidArgument,
        "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)"
      )
    }
    try checkDataFileOptions(options, version: header.version)
    if options.backingFormat != nil && options.backingFile == nil {
      throw BlockError(.invalidArgument, "Backing format cannot be used without backing file")
    }
    if options.backingFile != nil && options.preallocation != .off && !options.extendedL2 {
      throw BlockError(
        .invalidArgument,
        "Backing file and preallocation can only be used at the same time if extended_l2 is on")
    }
    header.clusterBits = UInt32(clusterSize.trailingZeroBitCount)
    header.size = UInt64(options.size)
    header.refcountOrder = UInt32(bits.trailingZeroBitCount)
    header.headerLength = header.version == 2 ? 72 : 112
    if options.lazyRefcounts { header.compatibleFeatures = Qcow2Feature.lazyRefcounts }
    header.compressionType = options.compressionType.rawValue
    if options.compressionType != .zlib {
      header.incompatibleFeatures |= Qcow2Feature.compressionType
    }
    if let format = options.backingFormat {
      header.extensions.append(
        Qcow2HeaderExtension(type: Qcow2HeaderExtension.backingFormat, data: Array(format.utf8)))
    }
    addDataFile(options, to: &header)
    // QEMU 7.2 writes its feature-name table into v3 headers of clusters larger
    // than 4 KiB only.
    if header.version == 3 && clusterSize > 4096 {
      header.extensions.append(.featureNameTable(Qcow2Feature.nameTable))
    }
    header.backingFile = options.backingFile
    return header
  }
}
