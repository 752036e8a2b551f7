import BlockCore

/// QEMU's `qcow2` format (block/qcow2.c) over a `file` child, with an optional
/// `backing` child: reads of standard, zero, compressed and unallocated
/// clusters; block status; allocating and in-place writes with QEMU's
/// copy-on-write, allocation order and metadata ordering; zero-writes and
/// discards (v3 zero flag).
///
/// Metadata (L1/L2 tables, refcounts) changes only under ``lock``, the
/// equivalent of QEMU's `s->lock`, and reaches the file in QEMU's dependency
/// order: refcounts before the L2 entries that use the clusters, L2 tables
/// before the L1 entries that point at them, and L2 entries before the
/// refcount decrements of the clusters they dropped, with a flush of the
/// file between dependent steps. Allocating writes leave their refcount
/// updates and L2 entries in the caches (write-back, written on flush); the
/// rest is written through. A crash leaves at worst leaked clusters.
@BlockActor
public final class Qcow2Driver: BlockDriver {
  /// The validated header.
  public internal(set) var header: Qcow2Header
  /// The active L1 table, decoded.
  var l1Table: [UInt64] { didSet { usedL1Entries = l1Table.usedEntryCount } }
  /// How many entries of ``l1Table`` the overlap check looks at: up to the
  /// last one in use.
  private(set) var usedL1Entries: Int
  /// Decoded L2 tables, some of them dirty (write-back).
  var l2Cache: Qcow2L2Cache
  /// What the dirty L2 tables wait for before they are written.
  var l2Dependencies = Qcow2L2Dependencies()
  /// Refcounts and the cluster allocator; nil when opened read-only.
  var refcounts: Qcow2Refcounts?
  /// Guards metadata across awaits (QEMU's `s->lock`).
  let lock = Qcow2Lock()
  /// Overlap checks and corruption state.
  var safety = Qcow2SafetyState()
  /// The persistent bitmaps a writable open keeps current, stored on close.
  var trackedBitmaps: Qcow2BitmapEditor?
  /// Whether the image looks metadata-preallocated, decided at the first
  /// block status query (QEMU's `metadata_preallocation` and
  /// `metadata_preallocation_checked`); nil until then.
  var metadataPreallocation: Bool?

  /// Creates a driver for an image whose header and L1 table were read.
  init(header: Qcow2Header, l1Table: [UInt64], refcountTable: [UInt64]?) {
    self.header = header
    self.l1Table = l1Table
    self.usedL1Entries = l1Table.usedEntryCount
    self.refcounts = refcountTable.map { Qcow2Refcounts(header: header, table: $0) }
    // QEMU caches L2 tables covering up to 32 MiB of them (its default
    // l2-cache-size), or the whole disk when that needs less.
    let wholeDisk = Int(header.requiredL1Entries(for: header.size))
    let budget = Int((32 << 20) / header.clusterSize)
    self.l2Cache = Qcow2L2Cache(capacity: max(4, min(wholeDisk, budget)))
  }

  public nonisolated var formatName: String { "qcow2" }

  /// Block status and backing semantics; byte-granular like QEMU's driver.
  public var capabilities: DriverCapabilities {
    var capabilities = DriverCapabilities(kind: .format)
    capabilities.hasBlockStatus = true
    capabilities.supportsBacking = true
    capabilities.canWriteZeroes = true
    capabilities.canWriteCompressed = true
    capabilities.supportedZeroFlags = [.mayUnmap]
    return capabilities
  }

  /// QEMU's `qcow2_co_flush_to_os` (`qcow2_write_caches`): the dirty L2
  /// tables are written back after what they depend on, then the cached
  /// refcount updates while the image is clean (a dirty image, with lazy
  /// refcounts, keeps them until it is closed). The engine flushes the
  /// file afterwards.
  public func flushToOS(_ node: BlockNode) async throws {
    guard let refcounts, node.file != nil else { return }
    let refcountsDue =
      !refcounts.deferredBlocks.isEmpty
      && header.incompatibleFeatures & Qcow2Feature.dirty == 0
    guard !l2Cache.dirtyOffsets.isEmpty || refcountsDue else { return }
    try await lock.withLock {
      try await writeBackL2Tables(node)
      if header.incompatibleFeatures & Qcow2Feature.dirty == 0 {
        try await refcounts.writeDeferred(file: try fileNode(node))
      }
    }
  }

  /// QEMU's `qcow2_refresh_limits`: zero-writes and discards by cluster.
  public func refreshLimits(_ limits: inout BlockLimits, node: BlockNode) {
    limits.pwriteZeroesAlignment = header.subclusterSize
    limits.pdiscardAlignment = header.clusterSize
  }

  /// The virtual disk size from the header.
  public func length(_ node: BlockNode) async throws -> Int64 { Int64(header.size) }

  /// The cluster size.
  public func clusterSize(_ node: BlockNode) -> Int64? { header.clusterSize }

  public func read(
    _ node: BlockNode, offset: Int64, length: Int64, into iov: IOVector, flags: RequestFlags
  ) async throws {
    try checkUsable()
    cleanCachesIfDue()
    try await reportingCorruption(node) {
      try await readGuest(node, offset: offset, into: iov, takingLock: true)
    }
  }

  /// Reads guest bytes: each run's mapping is looked up under the metadata
  /// lock unless the caller already holds it (copy-on-write reads).
  func readGuest(_ node: BlockNode, offset: Int64, into iov: IOVector, takingLock: Bool = false)
    async throws
  {
    let length = Int64(iov.count)
    var done: Int64 = 0
    while done < length {
      let position = offset + done
      let remaining = length - done
      let run =
        takingLock
        ? try await lock.withLock { try await mapping(node, offset: position, bytes: remaining) }
        : try await mapping(node, offset: position, bytes: remaining)
      let target = iov.slice(Int(done), Int(run.count))
      switch run.type {
      case .unallocated, .unallocatedAllocated:
        if let backing = node.backing {
          try await fileNode(node).emit(.readBackingAIO)
          try await backing.read(at: position, into: target)
        } else {
          target.fill(0)
        }
      case .zeroPlain, .zeroAllocated:
        target.fill(0)
      case .normal:
        try await fileNode(node).emit(.readAIO)
        try await dataNode(node).read(at: run.hostOffset, into: target)
      case .compressed:
        try await readCompressed(node, entry: run.entry, offset: position, into: target)
      }
      done += run.count
    }
  }

  /// Writes guest data run by run (see ``writeRun(_:offset:iov:continuing:)``).
  public func write(
    _ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector, flags: RequestFlags
  ) async throws {
    try checkUsable()
    cleanCachesIfDue()
    var done: Int64 = 0
    var hostEnd: Int64?
    while done < length {
      let run = try await reportingCorruption(node) {
        try await writeRun(
          node, offset: offset + done, iov: iov.slice(Int(done), Int(length - done)),
          continuing: hostEnd)
      }
      done += run.bytes
      hostEnd = run.hostEnd
    }
  }

  /// QEMU's `qcow2_co_block_status`: ZERO for zero clusters, DATA for data,
  /// OFFSET_VALID with the host offset for clusters stored in the file,
  /// nothing for unallocated clusters (the engine then asks the backing node).
  /// In an image that looks metadata-preallocated (see
  /// ``detectMetadataPreallocation(_:)``), data clusters also carry RECURSE:
  /// the engine asks the file whether they are holes.
  public func blockStatus(_ node: BlockNode, wantZero: Bool, offset: Int64, length: Int64)
    async throws -> BlockStatus
  {
    try checkUsable()
    let (run, preallocated) = try await reportingCorruption(node) {
      try await lock.withLock {
        if metadataPreallocation == nil {
          metadataPreallocation = await detectMetadataPreallocation(node)
        }
        return (
          try await mapping(node, offset: offset, bytes: length), metadataPreallocation == true
        )
      }
    }
    var status = BlockStatus(flags: [], count: run.count)
    if run.type.hasHostOffset {
      status.flags.insert(.offsetValid)
      status.mapOffset = run.hostOffset
      status.file = try dataNode(node)
    }
    switch run.type {
    case .zeroPlain, .zeroAllocated: status.flags.insert(.zero)
    case .normal, .compressed: status.flags.insert(.data)
    case .unallocated, .unallocatedAllocated: break
    }
    if preallocated && status.flags.isSuperset(of: [.data, .offsetValid]) {
      status.flags.insert(.recurse)
    }
    return status
  }

  /// Reads the part of a compressed cluster that `iov` covers, from guest
  /// `offset` on.
  private func readCompressed(_ node: BlockNode, entry: UInt64, offset: Int64, into iov: IOVector)
    async throws
  {
    if hasDataFile {
      throw corruption("Compressed cluster entry found in image with external data file")
    }
    let descriptor = Qcow2CompressedDescriptor(entry: entry, clusterBits: header.clusterBits)
    let compressed = IOVector(allocating: Int(descriptor.length))
    try await fileNode(node).emit(.readCompressed)
    try await fileNode(node).read(at: descriptor.offset, into: compressed)
    let cluster = AlignedBuffer(count: Int(header.clusterSize))
    let source = compressed.toArray()
    let inCluster = Int(offset & (header.clusterSize - 1))
    try cluster.withUnsafeMutableBytes { clusterBytes in
      try source.withUnsafeBytes {
        try Qcow2Compression.decompress(header.compression, $0, into: clusterBytes)
      }
      iov.copyIn(UnsafeRawBufferPointer(rebasing: clusterBytes[inCluster..<inCluster + iov.count]))
    }
  }

  func fileNode(_ node: BlockNode) throws -> BlockNode {
    try checkUsable()
    guard let file = node.file else { throw BlockError(BlockError.noMediumCode) }
    return file
  }

  /// Where guest data lives: the external data file, else the image file.
  func dataNode(_ node: BlockNode) throws -> BlockNode {
    if hasDataFile {
      guard let data = node.child(.data) else { throw BlockError(BlockError.noMediumCode) }
      return data
    }
    return try fileNode(node)
  }

  /// Whether guest data lives in an external data file (incompatible bit 2).
  var hasDataFile: Bool { header.incompatibleFeatures & Qcow2Feature.externalDataFile != 0 }

  /// The type of an L2 entry of this image.
  func clusterType(_ entry: UInt64) -> Qcow2ClusterType {
    Qcow2Entry.type(of: entry, dataFile: hasDataFile, extendedL2: header.extendedL2)
  }
}
