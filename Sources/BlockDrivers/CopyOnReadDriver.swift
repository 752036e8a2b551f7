import BlockCore

/// QEMU's `copy-on-read` filter (block/copy-on-read.c): reads go to the `file`
/// child with copy-on-read requested, so data read from the child's backing
/// chain is copied into the child; everything else passes through.
@BlockActor
public final class CopyOnReadDriver: BlockDriver {
  private let fileCapabilities: DriverCapabilities

  /// Creates a filter over a child with the given capabilities.
  public init(fileCapabilities: DriverCapabilities) {
    self.fileCapabilities = fileCapabilities
  }

  public nonisolated var formatName: String { "copy-on-read" }

  /// A filter passing the child's FUA and zero-write flags through.
  public var capabilities: DriverCapabilities {
    var capabilities = DriverCapabilities(kind: .filter)
    capabilities.hasBlockStatus = true
    capabilities.canWriteZeroes = true
    capabilities.supportedWriteFlags = fileCapabilities.supportedWriteFlags.intersection(.fua)
    capabilities.supportedZeroFlags = fileCapabilities.supportedZeroFlags.intersection([
      .fua, .mayUnmap, .noFallback,
    ])
    return capabilities
  }

  public func length(_ node: BlockNode) async throws -> Int64 {
    try file(of: node).length
  }

  /// Reads from the child with ``RequestFlags/copyOnRead``.
  public func read(
    _ node: BlockNode, offset: Int64, length: Int64, into iov: IOVector, flags: RequestFlags
  ) async throws {
    try await file(of: node).read(at: offset, into: iov, flags: flags.union(.copyOnRead))
  }

  public func write(
    _ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector, flags: RequestFlags
  ) async throws {
    try await file(of: node).write(at: offset, from: iov, flags: flags)
  }

  public func writeZeroes(_ node: BlockNode, offset: Int64, length: Int64, flags: RequestFlags)
    async throws
  {
    try await file(of: node).writeZeroes(at: offset, count: length, flags: flags)
  }

  public func discard(_ node: BlockNode, offset: Int64, length: Int64) async throws {
    try await file(of: node).discard(at: offset, count: length)
  }

  /// The child's status (RAW): the engine asks the child.
  public func blockStatus(_ node: BlockNode, wantZero: Bool, offset: Int64, length: Int64)
    async throws -> BlockStatus
  {
    BlockStatus(
      flags: [.raw, .offsetValid], count: length, mapOffset: offset, file: try file(of: node))
  }

  public func truncate(
    _ node: BlockNode, to length: Int64, exact: Bool, preallocation: PreallocationMode
  ) async throws {
    try await file(of: node).truncate(to: length, exact: exact, preallocation: preallocation)
  }

  private func file(of node: BlockNode) throws -> BlockNode {
    guard let file = node.file else { throw BlockError(BlockError.noMediumCode) }
    return file
  }

  /// Opens a copy-on-read node over its `file` child (the ``ImageOpener``
  /// factory).
  static func openNode(_ options: inout DriverOptions, _ context: OpenContext) async throws
    -> BlockNode
  {
    let file = try await ImageOpener.openFileChild(&options, context: context)
    do {
      let driver = CopyOnReadDriver(fileCapabilities: file.capabilities)
      let node = BlockNode(name: ImageOpener.newNodeName(), driver: driver, options: context.node)
      node.attach(file, role: .file)
      try await node.open()
      return node
    } catch {
      await file.close()
      throw error
    }
  }
}
