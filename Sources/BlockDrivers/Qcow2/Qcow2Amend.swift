import BlockCore

/// The changes `qemu-img amend -o ...` asks of a qcow2 image (QEMU's
/// `qcow2_amend_opts`); nil members are left as they are.
public struct Qcow2AmendOptions: Sendable, Equatable {
  /// `compat`: 2 (0.10/v2) or 3 (1.1/v3).
  public var version: UInt32?
  /// `lazy_refcounts`.
  public var lazyRefcounts: Bool?
  /// `refcount_bits`.
  public var refcountBits: UInt64?
  /// `size`: the new virtual size.
  public var size: UInt64?
  /// `backing_file`: must name the current backing file.
  public var backingFile: String?
  /// `backing_fmt`: must name the current backing format.
  public var backingFormat: String?
  /// `data_file`: only for images with an external data file.
  public var dataFile: String?
  /// `data_file_raw`: cannot be turned on for existing images.
  public var dataFileRaw: Bool?

  /// No changes.
  public init() {}
}

extension Qcow2Driver {
  /// Changes the image's options as QEMU's `qcow2_amend_options` does, in
  /// its order: upgrade, refcount width, header, backing file check, lazy
  /// refcounts, size, downgrade. Errors carry QEMU's messages. `progress`
  /// gets the work done and the projected total work, as QEMU's status
  /// callback.
  public func amend(
    _ node: BlockNode, options: Qcow2AmendOptions,
    progress: @escaping (Int64, Int64) -> Void = { _, _ in }
  ) async throws {
    let file = try fileNode(node)
    // Amending reads and rewrites the refcount structures in the file.
    try await lock.withLock { try await writeBackMetadata(node) }
    if let bits = options.refcountBits, bits == 0 || bits > 64 || bits & (bits - 1) != 0 {
      throw BlockError(
        .invalidArgument, "Refcount width must be a power of two and may not exceed 64 bits")
    }
    if options.dataFile != nil && header.incompatibleFeatures & Qcow2Feature.externalDataFile == 0 {
      throw BlockError(
        .invalidArgument, "data-file can only be set for images that use an external data file")
    }
    if options.dataFileRaw == true
      && header.autoclearFeatures & Qcow2Feature.rawExternalData == 0
    {
      throw BlockError(.invalidArgument, "data-file-raw cannot be set on existing images")
    }
    let oldVersion = header.version
    let newVersion = options.version ?? oldVersion
    let changesWidth = options.refcountBits.map { $0 != UInt64(header.refcountBits) } ?? false
    let status = Qcow2AmendProgress(
      totalOperations: (newVersion != oldVersion ? 1 : 0) + (changesWidth ? 1 : 0),
      report: progress)
    if newVersion > oldVersion {
      status.current = .upgrading
      status.update(0, of: 2)
      status.update(1, of: 2)
      try await rewriteHeader(file) { $0.upgradeToVersion3() }
      status.update(2, of: 2)
    }
    if let bits = options.refcountBits, changesWidth {
      if newVersion < 3 && bits != 16 {
        throw BlockError(
          .invalidArgument,
          "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"
        )
      }
      status.current = .changingRefcountOrder
      try await lock.withLock {
        try await changeRefcountWidth(
          node, file: file, order: UInt32(bits.trailingZeroBitCount), status: status)
      }
    }
    try await rewriteHeader(file) { _ in }
    if options.backingFile != nil || options.backingFormat != nil {
      if options.backingFile != header.backingFile || options.backingFormat != header.backingFormat
      {
        throw BlockError(
          .invalidArgument, "Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.")
      }
    }
    let lazy = header.compatibleFeatures & Qcow2Feature.lazyRefcounts != 0
    if let wanted = options.lazyRefcounts, wanted != lazy {
      if wanted && newVersion < 3 {
        throw BlockError(
          .invalidArgument,
          "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"
        )
      }
      try await rewriteHeader(file) {
        if wanted {
          $0.compatibleFeatures |= Qcow2Feature.lazyRefcounts
        } else {
          $0.compatibleFeatures &= ~Qcow2Feature.lazyRefcounts
        }
      }
    }
    if let size = options.size, size != 0 {
      // QEMU passes the size on as a signed 64-bit number.
      try await node.truncate(to: Int64(bitPattern: size), exact: true)
    }
    if newVersion < oldVersion {
      status.current = .downgrading
      try await downgrade(node, file: file, status: status)
    }
  }

  /// Writes the whole header cluster again after `change` (QEMU's
  /// `qcow2_update_header`).
  func rewriteHeader(_ file: BlockNode, _ change: (inout Qcow2Header) -> Void) async throws {
    var updated = header
    change(&updated)
    let bytes = try updated.encode()
    try await file.write(at: 0, bytes: bytes)
    try await file.flush()
    header = updated
  }
}

extension Qcow2Header {
  /// The version 3 header of a version 2 image: QEMU's 112-byte header and
  /// feature name table.
  mutating func upgradeToVersion3() {
    version = 3
    headerLength = 112
    refcountOrder = 4
    if !extensions.contains(where: { $0.type == Qcow2HeaderExtension.featureNameTable }) {
      extensions.append(.featureNameTable(Qcow2Feature.nameTable))
    }
  }
}
