import BlockCore

/// QEMU's `qcow2` format (block/qcow2.c) over a `file` child, with an optional
/// `backing` child: the read side (standard, zero, compressed and unallocated
/// clusters) and block status.
///
/// Writes are not implemented yet: they fail with ENOTSUP and the image is
/// never modified, so opening an image read-write is safe. Metadata that later
/// writes will update across awaits (L2 tables, refcounts) must then be
/// guarded the way QEMU guards it with `s->lock`.
@BlockActor
public final class Qcow2Driver: BlockDriver {
  /// The validated header.
  public let header: Qcow2Header
  /// The active L1 table, decoded.
  let l1Table: [UInt64]
  /// Decoded L2 tables.
  var l2Cache: Qcow2L2Cache

  /// Creates a driver for an image whose header and L1 table were read.
  init(header: Qcow2Header, l1Table: [UInt64]) {
    self.header = header
    self.l1Table = l1Table
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
    return capabilities
  }

  /// QEMU's `qcow2_refresh_limits`: zero-writes and discards by cluster.
  public func refreshLimits(_ limits: inout BlockLimits, node: BlockNode) {
    limits.pwriteZeroesAlignment = header.clusterSize
    limits.pdiscardAlignment = header.clusterSize
  }

  /// The virtual disk size from the header.
  public func length(_ node: BlockNode) async throws -> Int64 { Int64(header.size) }

  /// The cluster size.
  public func clusterSize(_ node: BlockNode) -> Int64? { header.clusterSize }

  public func read(
    _ node: BlockNode, offset: Int64, length: Int64, into iov: IOVector, flags: RequestFlags
  ) async throws {
    var done: Int64 = 0
    while done < length {
      let position = offset + done
      let run = try await mapping(node, offset: position, bytes: length - done)
      let target = iov.slice(Int(done), Int(run.count))
      switch run.type {
      case .unallocated:
        if let backing = node.backing {
          try await backing.read(at: position, into: target)
        } else {
          target.fill(0)
        }
      case .zeroPlain, .zeroAllocated:
        target.fill(0)
      case .normal:
        try await fileNode(node).read(at: run.hostOffset, into: target)
      case .compressed:
        try await readCompressed(node, entry: run.entry, offset: position, into: target)
      }
      done += run.count
    }
  }

  /// Refused: the write path is not implemented yet.
  public func write(
    _ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector, flags: RequestFlags
  ) async throws {
    throw BlockError.notSupported("qcow2: writing is not supported yet")
  }

  /// QEMU's `qcow2_co_block_status`: ZERO for zero clusters, DATA for data,
  /// OFFSET_VALID with the host offset for clusters stored in the file,
  /// nothing for unallocated clusters (the engine then asks the backing node).
  public func blockStatus(_ node: BlockNode, wantZero: Bool, offset: Int64, length: Int64)
    async throws -> BlockStatus
  {
    let run = try await mapping(node, offset: offset, bytes: length)
    var status = BlockStatus(flags: [], count: run.count)
    if run.type == .normal || run.type == .zeroAllocated {
      status.flags.insert(.offsetValid)
      status.mapOffset = run.hostOffset
      status.file = node.file
    }
    switch run.type {
    case .zeroPlain, .zeroAllocated: status.flags.insert(.zero)
    case .normal, .compressed: status.flags.insert(.data)
    case .unallocated: break
    }
    return status
  }

  /// Reads the part of a compressed cluster that `iov` covers, from guest
  /// `offset` on.
  private func readCompressed(_ node: BlockNode, entry: UInt64, offset: Int64, into iov: IOVector)
    async throws
  {
    let descriptor = Qcow2CompressedDescriptor(entry: entry, clusterBits: header.clusterBits)
    let compressed = IOVector(allocating: Int(descriptor.length))
    try await fileNode(node).read(at: descriptor.offset, into: compressed)
    let cluster = AlignedBuffer(count: Int(header.clusterSize))
    let source = compressed.toArray()
    try source.withUnsafeBytes { try Qcow2Compression.inflate($0, into: cluster.bytes) }
    let inCluster = Int(offset & (header.clusterSize - 1))
    iov.copyIn(UnsafeRawBufferPointer(rebasing: cluster.bytes[inCluster..<inCluster + iov.count]))
  }

  func fileNode(_ node: BlockNode) throws -> BlockNode {
    guard let file = node.file else { throw BlockError(BlockError.noMediumCode) }
    return file
  }
}
