import BlockCore

/// QEMU's `raw` format (block/raw-format.c): the bytes of the `file` child
/// as they are, optionally a window of them (`offset`, `size`).
///
/// Every request is passed to the file child through its engine, shifted by
/// the window's offset (reads and writes emit `read_aio` / `write_aio` on the
/// file child first, as QEMU's raw does); block status answers RAW so that the engine asks the
/// file. With `size`, requests must stay inside the window (reads past it fail
/// with EINVAL, writes with ENOSPC) and the disk cannot be resized.
@BlockActor
public final class RawDriver: BlockDriver {
  /// Where the disk starts in the file (`offset`, default 0).
  public private(set) var offset: Int64
  /// The fixed size (`size`), or nil when the disk runs to the end of the file.
  public private(set) var fixedSize: Int64?
  private let fileCapabilities: DriverCapabilities

  /// Creates a driver for a window on a file child whose capabilities are
  /// given (the node's capabilities are derived from them once).
  public init(offset: Int64 = 0, size: Int64? = nil, fileCapabilities: DriverCapabilities) {
    self.offset = offset
    self.fixedSize = size
    self.fileCapabilities = fileCapabilities
  }

  public nonisolated var formatName: String { "raw" }

  /// The child's FUA and zero-write flags, passed through.
  public var capabilities: DriverCapabilities {
    var capabilities = DriverCapabilities(kind: .format)
    capabilities.hasBlockStatus = true
    capabilities.canWriteZeroes = true
    capabilities.supportedWriteFlags = fileCapabilities.supportedWriteFlags.intersection(.fua)
    capabilities.supportedZeroFlags = fileCapabilities.supportedZeroFlags.intersection([
      .fua, .mayUnmap, .noFallback,
    ])
    return capabilities
  }

  /// QEMU's `raw_getlength`: the file's length past the offset, capped at `size`.
  public func length(_ node: BlockNode) async throws -> Int64 {
    let available = max(0, try file(of: node).length - offset)
    return min(fixedSize ?? available, available)
  }

  public func read(
    _ node: BlockNode, offset: Int64, length: Int64, into iov: IOVector, flags: RequestFlags
  ) async throws {
    let position = try fileOffset(offset, length, isWrite: false)
    let file = try file(of: node)
    try await file.emit(.readAIO)
    try await file.read(at: position, into: iov, flags: flags)
  }

  public func write(
    _ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector, flags: RequestFlags
  ) async throws {
    let position = try fileOffset(offset, length, isWrite: true)
    let file = try file(of: node)
    try await file.emit(.writeAIO)
    try await file.write(at: position, from: iov, flags: flags)
  }

  public func writeZeroes(_ node: BlockNode, offset: Int64, length: Int64, flags: RequestFlags)
    async throws
  {
    let position = try fileOffset(offset, length, isWrite: true)
    try await file(of: node).writeZeroes(at: position, count: length, flags: flags)
  }

  public func discard(_ node: BlockNode, offset: Int64, length: Int64) async throws {
    let position = try fileOffset(offset, length, isWrite: true)
    try await file(of: node).discard(at: position, count: length)
  }

  /// RAW at the same place in the file child, shifted by the window's offset.
  public func blockStatus(_ node: BlockNode, wantZero: Bool, offset: Int64, length: Int64)
    async throws -> BlockStatus
  {
    BlockStatus(
      flags: [.raw, .offsetValid], count: length, mapOffset: offset + self.offset,
      file: try file(of: node))
  }

  /// Resizes the file to the window's offset plus `length`; refused for a
  /// fixed-size window (QEMU's `raw_co_truncate`).
  public func truncate(
    _ node: BlockNode, to length: Int64, exact: Bool, preallocation: PreallocationMode
  ) async throws {
    if fixedSize != nil {
      throw BlockError.notSupported("Cannot resize fixed-size raw disks")
    }
    if Int64.max - length < offset {
      throw BlockError(.invalidArgument, "Disk size too large for the chosen offset")
    }
    try await file(of: node).truncate(
      to: length + offset, exact: exact,
      preallocation: preallocation)
  }

  /// QEMU's `raw_adjust_offset`: the file offset of a request, refused when it
  /// leaves a fixed-size window.
  private func fileOffset(_ position: Int64, _ length: Int64, isWrite: Bool) throws -> Int64 {
    if let fixedSize, position > fixedSize || length > fixedSize - position {
      throw BlockError(isWrite ? .noSpace : .invalidArgument)
    }
    if position > Int64.max - offset { throw BlockError(.invalidArgument) }
    return position + offset
  }

  private func file(of node: BlockNode) throws -> BlockNode {
    guard let file = node.file else { throw BlockError(BlockError.noMediumCode) }
    return file
  }
}

extension RawDriver {
  /// Opens a `raw` node over its `file` child (the ``ImageOpener`` factory),
  /// checking the window against the file as QEMU's `raw_apply_options`.
  static func openNode(_ options: inout DriverOptions, _ context: OpenContext) async throws
    -> BlockNode
  {
    let offset = try options.takeSize("offset") ?? 0
    let size = try options.takeSize("size")
    // Without a window raw passes its user's permissions through (QEMU treats
    // it as a filter): the file shares writing as the user does.
    var childContext = context
    if offset == 0 && size == nil { childContext.sharesFileWrites = !context.noShare }
    let file = try await ImageOpener.openFileChild(&options, context: childContext)
    do {
      try checkWindow(offset: offset, size: size, fileLength: file.length)
      let driver = RawDriver(offset: offset, size: size, fileCapabilities: file.capabilities)
      let node = BlockNode(name: ImageOpener.newNodeName(), driver: driver, options: context.node)
      node.attach(file, role: .file)
      try await node.open()
      return node
    } catch {
      await file.close()
      throw error
    }
  }

  /// A `raw` node over an open node, its disk starting `offset` bytes into
  /// it (qemu-nbd's `-o`: `bdrv_open` of `driver=raw,file=NODE,offset=N`),
  /// with `options` as its node options. The node must have no other
  /// parent; on failure it is left open for its owner.
  public static func window(over file: BlockNode, offset: Int64, options: NodeOptions)
    async throws -> BlockNode
  {
    try checkWindow(offset: offset, size: nil, fileLength: file.length)
    let driver = RawDriver(offset: offset, fileCapabilities: file.capabilities)
    let node = BlockNode(name: ImageOpener.newNodeName(), driver: driver, options: options)
    node.attach(file, role: .file)
    do {
      try await node.open()
    } catch {
      node.detach(role: .file)
      throw error
    }
    return node
  }

  /// QEMU's `raw_apply_options`: the window must lie within the file and its
  /// size be whole sectors.
  static func checkWindow(offset: Int64, size: Int64?, fileLength: Int64) throws {
    if offset > fileLength {
      throw BlockError(
        .invalidArgument,
        "Offset (\(offset)) cannot be greater than size of the containing file (\(fileLength))")
    }
    if let size, fileLength - offset < size {
      throw BlockError(
        .invalidArgument,
        "The sum of offset (\(offset)) and size (\(size)) has to be smaller or equal to the  actual size of the containing file (\(fileLength))"
      )
    }
    if let size, size % 512 != 0 {
      throw BlockError(.invalidArgument, "Specified size is not multiple of 512")
    }
  }
}

extension RawDriver {
  /// QEMU's `raw_reopen_prepare`: `offset` and `size` may change, checked
  /// against the file as at open; the node's length follows on commit.
  public func prepareReopen(_ node: BlockNode, _ request: inout BlockReopenRequest) async throws
    -> any BlockReopenChange
  {
    var options = DriverOptions(request.options)
    let offset = try options.takeSize("offset") ?? 0
    let size = try options.takeSize("size")
    request.options = options.values
    try Self.checkWindow(offset: offset, size: size, fileLength: try file(of: node).length)
    return ClosureReopen(commit: { [self] in
      self.offset = offset
      self.fixedSize = size
    })
  }
}
