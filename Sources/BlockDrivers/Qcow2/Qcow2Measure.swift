import BlockCore

/// The qcow2 creation parameters that the size of a new image depends on
/// (the `-o` options of `qemu-img measure -O qcow2`).
public struct Qcow2MeasureOptions: Sendable, Equatable {
  /// Cluster size in bytes (validated by ``Qcow2Measure/measure(_:source:)``).
  public var clusterSize: Int64 = 65536
  /// Refcount width in bits.
  public var refcountBits: Int = 16
  /// Extended L2 entries (16-byte entries with subcluster bitmaps).
  public var extendedL2 = false
  /// Header version: 2 (`compat=0.10`) or 3 (`compat=1.1`).
  public var version = 3
  /// Whether data is preallocated (`preallocation=falloc` or `full`).
  public var preallocatesData = false
  /// Whether the new image has a backing file.
  public var hasBackingFile = false
  /// The virtual size when there is no source image.
  public var size: Int64 = 0

  /// The defaults of `qemu-img create -f qcow2`.
  public init() {}
}

/// What a new qcow2 image needs (QEMU's `BlockMeasureInfo`).
public struct Qcow2Measurement: Sendable, Equatable {
  /// Bytes the image needs for the source's data and all metadata.
  public var required: Int64
  /// Bytes the image takes with every cluster allocated.
  public var fullyAllocated: Int64
  /// Bytes the source's persistent bitmaps would take; nil when the source
  /// or the target cannot have them.
  public var bitmaps: Int64?

  /// Creates a measurement.
  public init(required: Int64, fullyAllocated: Int64, bitmaps: Int64?) {
    self.required = required
    self.fullyAllocated = fullyAllocated
    self.bitmaps = bitmaps
  }
}

/// QEMU's `qcow2_measure` (block/qcow2.c): the size of a qcow2 image holding
/// a source image's data, or of an empty one of a given size.
@BlockActor
public enum Qcow2Measure {
  /// QEMU's QCOW_MAX_L1_SIZE.
  static let maxL1Bytes: Int64 = 32 << 20

  /// Measures a new image for `source` (its allocated data, through its
  /// chain), or for `options.size` without one. Throws QEMU's messages for
  /// invalid parameters.
  public static func measure(_ options: Qcow2MeasureOptions, source: BlockNode?) async throws
    -> Qcow2Measurement
  {
    try validate(options)
    let clusterSize = options.clusterSize
    let entrySize: Int64 = options.extendedL2 ? 16 : 8
    let tooLarge = options.size > Int64.max - clusterSize
    var virtualSize = tooLarge ? 0 : roundUp(options.size, clusterSize)
    let l2Tables = divideRoundingUp(virtualSize / clusterSize, clusterSize / entrySize)
    // QEMU checks the `size` option only, before looking at the source.
    if tooLarge || l2Tables > maxL1Bytes / 8 {
      throw BlockError(
        .fileTooLarge, "The image size is too large (try using a larger cluster size)")
    }
    var required: Int64 = 0
    if let source {
      let sourceSize = source.length
      virtualSize = roundUp(sourceSize, clusterSize)
      if options.hasBackingFile {
        // The new backing file may share nothing with the source.
        required = virtualSize
      } else {
        required = try await dataBytes(source, clusterSize: clusterSize)
      }
    }
    if options.preallocatesData { required = virtualSize }
    let fullyAllocated = preallocatedSize(
      virtualSize: virtualSize, clusterSize: clusterSize,
      refcountOrder: options.refcountBits.trailingZeroBitCount, extendedL2: options.extendedL2)
    var bitmaps: Int64?
    if options.version >= 3, let source, let qcow2 = source.driver as? Qcow2Driver,
      qcow2.header.version >= 3
    {
      bitmaps = try await bitmapsSize(source, qcow2, clusterSize: clusterSize)
    }
    return Qcow2Measurement(
      required: fullyAllocated - virtualSize + required, fullyAllocated: fullyAllocated,
      bitmaps: bitmaps)
  }

  /// QEMU's option checks, in its order, with its messages.
  public static func validate(_ options: Qcow2MeasureOptions) throws {
    let size = options.clusterSize
    guard size >= 512, size <= 2 << 20, size & (size - 1) == 0 else {
      throw BlockError(
        .invalidArgument, "Cluster size must be a power of two between 512 and 2048k")
    }
    if options.extendedL2 && size < 512 * 32 {
      throw BlockError(
        .invalidArgument,
        "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes")
    }
    let bits = options.refcountBits
    guard bits > 0, bits <= 64, bits & (bits - 1) == 0 else {
      throw BlockError(
        .invalidArgument, "Refcount width must be a power of two and may not exceed 64 bits")
    }
    if options.version < 3 && bits != 16 {
      throw BlockError(
        .invalidArgument,
        "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"
      )
    }
  }

  /// The bytes of whole clusters holding the source's data: zero ranges are
  /// skipped, a data range counts from the start of its first cluster to the
  /// end of its last.
  static func dataBytes(_ source: BlockNode, clusterSize: Int64) async throws -> Int64 {
    let size = source.length
    var required: Int64 = 0
    var offset: Int64 = 0
    while offset < size {
      let status: BlockStatus
      do {
        status = try await source.blockStatusAbove(
          base: nil, offset: offset, bytes: size - offset, wantZero: true
        ).status
      } catch let error as BlockError {
        throw BlockError(error.code, "Unable to get block status: \(error.codeDescription)")
      }
      var count = max(status.count, 1)
      if !status.flags.contains(.zero) && status.flags.contains(.data)
        && status.flags.contains(.allocated)
      {
        count = roundUp(offset + count, clusterSize) - offset
        required += offset % clusterSize + count
      }
      offset += count
    }
    return required
  }

  /// QEMU's `qcow2_calc_prealloc_size`: the file size of a fully allocated
  /// image (header, L2 and L1 tables, refcount structures, data).
  public static func preallocatedSize(
    virtualSize: Int64, clusterSize: Int64, refcountOrder: Int, extendedL2: Bool
  ) -> Int64 {
    let alignedSize = roundUp(virtualSize, clusterSize)
    let entrySize: Int64 = extendedL2 ? 16 : 8
    var metadata = clusterSize
    let l2Entries = roundUp(alignedSize / clusterSize, clusterSize / entrySize)
    metadata += l2Entries * entrySize
    let l1Entries = roundUp(l2Entries * entrySize / clusterSize, clusterSize / 8)
    metadata += l1Entries * 8
    metadata += refcountMetadataSize(
      clusters: (metadata + alignedSize) / clusterSize, clusterSize: clusterSize,
      refcountOrder: refcountOrder)
    return metadata + alignedSize
  }

  /// QEMU's `qcow2_refcount_metadata_size` (without the generous increase):
  /// the refcount table and blocks that count `clusters` clusters and
  /// themselves, found as a fixed point.
  public static func refcountMetadataSize(clusters: Int64, clusterSize: Int64, refcountOrder: Int)
    -> Int64
  {
    let blocksPerTableCluster = clusterSize / 8
    let refcountsPerBlock = clusterSize * 8 / (1 << Int64(refcountOrder))
    var table: Int64 = 0
    var blocks: Int64 = 0
    var count: Int64 = 0
    var last: Int64
    repeat {
      last = count
      blocks = divideRoundingUp(clusters + table + blocks, refcountsPerBlock)
      table = divideRoundingUp(blocks, blocksPerTableCluster)
      count = clusters + blocks + table
    } while count != last
    return (blocks + table) * clusterSize
  }

  /// QEMU's `qcow2_get_persistent_dirty_bitmap_size`: for each bitmap of
  /// the source (its directory, in use or not; none when a program lacking
  /// bitmap support invalidated them), its data and bitmap table in whole
  /// target clusters, plus the directory.
  static func bitmapsSize(_ node: BlockNode, _ driver: Qcow2Driver, clusterSize: Int64)
    async throws -> Int64
  {
    guard let file = node.file else { return 0 }
    let length = node.length
    var bitmaps: Int64 = 0
    var directoryBytes: Int64 = 0
    for info in try await Qcow2BitmapInfo.readAll(from: file, header: driver.header) {
      let granularity = Int64(info.granularity)
      let bitmapBytes = divideRoundingUp(divideRoundingUp(length, granularity), 8)
      let clusters = divideRoundingUp(bitmapBytes, clusterSize)
      bitmaps += clusters * clusterSize + roundUp(clusters * 8, clusterSize)
      directoryBytes += roundUp(Int64(24 + info.name.utf8.count), 8)
    }
    return bitmaps + roundUp(directoryBytes, clusterSize)
  }

  static func roundUp(_ value: Int64, _ alignment: Int64) -> Int64 {
    divideRoundingUp(value, alignment) * alignment
  }

  static func divideRoundingUp(_ value: Int64, _ divisor: Int64) -> Int64 {
    (value + divisor - 1) / divisor
  }
}
