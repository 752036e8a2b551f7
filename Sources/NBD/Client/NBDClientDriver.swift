import BlockCore
import BlockDrivers

/// The `nbd` protocol driver (QEMU 7.2's `block/nbd.c`): a node whose data
/// is an export of an NBD server.
///
/// Requests map to NBD commands as QEMU maps them: reads (structured, with
/// holes), writes (FUA when the server takes it), zero-writes (NO_HOLE
/// unless MAY_UNMAP, FAST_ZERO for NO_FALLBACK), discards as TRIM (skipped
/// when the server does not advertise it), flushes to the OS as FLUSH, and
/// block status with REQ_ONE from `base:allocation` (or the `x-dirty-bitmap`
/// context, read as if it were `base:allocation`). Limits come from
/// INFO_BLOCK_SIZE, the size and read-only state from the export.
///
/// Beyond QEMU 7.2: with extended headers (asked for unless the node's
/// `x-extended-headers` is off), zero-writes, discards and block status
/// take 64-bit lengths, so a range past 4 GiB is one request.
@BlockActor
public final class NBDClientDriver: BlockDriver {
  /// The node's options.
  public let config: NBDClientConfig
  /// What the handshake negotiated.
  public let export: NBDNegotiatedExport
  /// The connections (several with `x-multi-conn` when the server
  /// advertises CAN_MULTI_CONN); requests take them in turn.
  private let connections: [NBDReconnectingConnection]
  private var nextConnection = 0

  /// How many connections the driver uses.
  public var connectionCount: Int { connections.count }

  private init(config: NBDClientConfig, connections: [NBDReconnectingConnection]) {
    self.config = config
    self.connections = connections
    export = connections[0].export
  }

  /// The connection for the next request (round robin). With CAN_MULTI_CONN
  /// any connection's FLUSH covers the writes every connection completed,
  /// so each request may take any of them.
  private var connection: NBDReconnectingConnection {
    defer { nextConnection = (nextConnection + 1) % connections.count }
    return connections[nextConnection]
  }

  private func closeConnections() async {
    for connection in connections { await connection.close() }
  }

  /// Connects to the server `config` names and negotiates the export
  /// (retrying for `open-timeout` seconds).
  public static func connect(_ config: NBDClientConfig) async throws -> NBDClientDriver {
    var handshake = NBDClientHandshake(
      export: config.export, context: config.dirtyBitmap ?? NBDProtocol.baseAllocation,
      extendedHeaders: config.extendedHeaders)
    if let id = config.tlsCreds {
      handshake.tls = NBDClientTLS(
        credentials: try NBDTLSObjects.credentials(id, for: .client),
        hostname: config.tlsHostname)
    }
    let first = try await NBDReconnectingConnection.open(config, handshake: handshake)
    var connections = [first]
    if config.multiConn > 1 && first.export.flags.contains(.canMultiConn) {
      // More of the same: a connection that fails or negotiates another
      // export is dropped, and the driver goes on with those it has.
      var single = config
      single.openTimeout = 0
      while connections.count < config.multiConn {
        guard let more = try? await NBDReconnectingConnection.open(single, handshake: handshake)
        else { break }
        guard more.export.size == first.export.size, more.export.flags == first.export.flags
        else {
          await more.close()
          break
        }
        connections.append(more)
      }
    }
    return NBDClientDriver(config: config, connections: connections)
  }

  /// The ``DriverFactory`` of `driver=nbd`.
  public static func openNode(_ options: inout DriverOptions, _ context: OpenContext)
    async throws -> BlockNode
  {
    let config = try NBDClientConfig.take(from: &options)
    let driver = try await connect(config)
    // QEMU's nbd_handle_updated_info runs without an error pointer, so only
    // its errno reaches the user ("Could not open image: ...").
    if config.dirtyBitmap != nil && driver.export.contextID == nil {
      await driver.closeConnections()
      throw BlockError(.invalidArgument, "Could not open image: Invalid argument")
    }
    if driver.export.readOnly && !context.node.readOnly {
      await driver.closeConnections()
      throw BlockError(.permissionDenied, "Could not open image: Permission denied")
    }
    let node = BlockNode(name: ImageOpener.newNodeName(), driver: driver, options: context.node)
    do {
      try await node.open()
    } catch {
      await driver.closeConnections()
      throw error
    }
    return node
  }

  public nonisolated var formatName: String { "nbd" }

  public var capabilities: DriverCapabilities {
    var capabilities = DriverCapabilities(kind: .protocolDriver)
    capabilities.hasBlockStatus = true
    let flags = export.flags
    if flags.contains(.sendFUA) {
      capabilities.supportedWriteFlags = [.fua]
      capabilities.supportedZeroFlags.insert(.fua)
    }
    if flags.contains(.sendWriteZeroes) {
      capabilities.canWriteZeroes = true
      capabilities.supportedZeroFlags.insert(.mayUnmap)
      if flags.contains(.sendFastZero) { capabilities.supportedZeroFlags.insert(.noFallback) }
    }
    return capabilities
  }

  /// QEMU's `nbd_refresh_limits`: the request alignment is the server's
  /// minimum block size (none sent: 1 when the size is not a multiple of
  /// 512 or block status is negotiated, else 512); transfers and zero-writes
  /// are at most min(32 MiB, maximum block size). With extended headers
  /// (as QEMU 9), zero-writes and discards have no 32-bit limit.
  public func refreshLimits(_ limits: inout BlockLimits, node: BlockNode) {
    var minimum = Int64(export.minimumBlock)
    let maximum = BlockLimits.minNonZero(
      Int64(NBDProtocol.maxBufferSize), Int64(export.maximumBlock))
    if minimum == 0 && (export.size % 512 != 0 || export.contextID != nil) { minimum = 1 }
    let alignment = minimum == 0 ? 512 : minimum
    limits.requestAlignment = alignment
    if export.extendedHeaders {
      limits.maxPdiscard = Self.extendedLimit / alignment * alignment
      limits.maxPwriteZeroes = Self.extendedLimit / alignment * alignment
    } else {
      limits.maxPdiscard = Int64(Int32.max) / alignment * alignment
      limits.maxPwriteZeroes = maximum
    }
    limits.maxTransfer = maximum
    limits.optTransfer = max(limits.optTransfer, Int64(export.preferredBlock))
  }

  /// The longest zero-write, discard or block status asked in one request
  /// once extended headers are negotiated (2^62: far past any export).
  static let extendedLimit: Int64 = 1 << 62

  public func length(_ node: BlockNode) async throws -> Int64 { Int64(export.size) }

  public func read(
    _ node: BlockNode, offset: Int64, length: Int64, into iov: IOVector, flags: RequestFlags
  ) async throws {
    // The engine may read up to the aligned end past the export's end:
    // that tail reads as zeroes without asking the server.
    let size = Int64(export.size)
    let inside = max(0, min(length, size - offset))
    if inside < length { iov.fill(0, at: Int(inside), count: Int(length - inside)) }
    guard inside > 0 else { return }
    _ = try await connection.perform {
      try await $0.request(
        .read, offset: UInt64(offset), length: UInt64(inside),
        into: inside == length ? iov : iov.slice(0, Int(inside)))
    }
  }

  public func write(
    _ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector, flags: RequestFlags
  ) async throws {
    _ = try await connection.perform {
      try await $0.request(
        .write, flags: flags.contains(.fua) ? .fua : [], offset: UInt64(offset),
        length: UInt64(length), payload: iov)
    }
  }

  public func writeZeroes(_ node: BlockNode, offset: Int64, length: Int64, flags: RequestFlags)
    async throws
  {
    guard export.flags.contains(.sendWriteZeroes) else { throw BlockError.notSupported() }
    var command: NBDCommandFlags = []
    if flags.contains(.fua) { command.insert(.fua) }
    if !flags.contains(.mayUnmap) { command.insert(.noHole) }
    if flags.contains(.noFallback) { command.insert(.fastZero) }
    let compactPiece = Int64(NBDProtocol.maxBufferSize)
    try await connection.perform { current in
      try await Self.inPieces(current, offset, length, compactPiece) {
        _ = try await current.request(.writeZeroes, flags: command, offset: $0, length: $1)
      }
    }
  }

  public func discard(_ node: BlockNode, offset: Int64, length: Int64) async throws {
    guard export.flags.contains(.sendTrim) else { return }
    let alignment = node.limits.requestAlignment
    let compactPiece = Int64(Int32.max) / alignment * alignment
    try await connection.perform { current in
      try await Self.inPieces(current, offset, length, compactPiece) {
        _ = try await current.request(.trim, offset: $0, length: $1)
      }
    }
  }

  /// Sends a zero-write or discard of `length` bytes as one request when
  /// `connection` has extended headers, else in pieces of `compactPiece`
  /// bytes (the node's limits keep requests that small unless the first
  /// connection had extended headers and a reconnect landed on a server
  /// without them).
  private static func inPieces(
    _ connection: NBDClientConnection, _ offset: Int64, _ length: Int64, _ compactPiece: Int64,
    _ send: (_ offset: UInt64, _ length: UInt64) async throws -> Void
  ) async throws {
    let piece = connection.export.extendedHeaders ? length : compactPiece
    var done: Int64 = 0
    while done < length {
      let count = min(piece, length - done)
      try await send(UInt64(offset + done), UInt64(count))
      done += count
    }
  }

  /// QEMU flushes an NBD node in `bdrv_co_flush_to_os`: every flush is sent,
  /// written data or not.
  public func flushToOS(_ node: BlockNode) async throws {
    guard export.flags.contains(.sendFlush) else { return }
    _ = try await connection.perform { try await $0.request(.flush, offset: 0, length: 0) }
  }

  public func blockStatus(_ node: BlockNode, wantZero: Bool, offset: Int64, length: Int64)
    async throws -> BlockStatus
  {
    let size = Int64(export.size)
    guard export.contextID != nil else {
      return BlockStatus(
        flags: [.data, .offsetValid], count: length, mapOffset: offset, file: node)
    }
    if offset >= size {
      // The aligned tail past the export's end reads as zeroes.
      return BlockStatus(flags: .zero, count: length, mapOffset: 0, file: nil)
    }
    let alignment = node.limits.requestAlignment
    let answer = try await connection.perform { current in
      // The current connection's headers decide (a reconnect may change them).
      let cap = current.export.extendedHeaders ? Self.extendedLimit : Int64(Int32.max)
      let asked = min(length, size - offset, cap / alignment * alignment)
      return try await current.request(
        .blockStatus, flags: .reqOne, offset: UInt64(offset), length: UInt64(asked))
    }
    guard let extent = answer else { throw BlockError(.ioError) }
    var count = Int64(extent.length)
    var flags = extent.flags
    if config.dirtyBitmap == "qemu:allocation-depth" {
      // QEMU reads the depth as if it were base:allocation's bits, clamped
      // to 2 (ZERO): deeper layers show as zero data.
      flags = min(flags, 2)
    }
    let minimum = Int64(export.minimumBlock)
    if minimum > 1 && count % minimum != 0 {
      // QEMU's fix for a server that breaks its own minimum: round down, or
      // up to one block reported as data when shorter than a block.
      if count > minimum {
        count -= count % minimum
      } else {
        count = minimum
        flags = 0
      }
    }
    var status: BlockStatusFlags = [.offsetValid]
    if flags & NBDAllocationFlags.hole.rawValue == 0 { status.insert(.data) }
    if flags & NBDAllocationFlags.zero.rawValue != 0 { status.insert(.zero) }
    return BlockStatus(flags: status, count: min(count, length), mapOffset: offset, file: node)
  }

  /// QEMU's `nbd_co_truncate`: an NBD node keeps its size.
  public func truncate(
    _ node: BlockNode, to length: Int64, exact: Bool, preallocation: PreallocationMode
  ) async throws {
    let size = Int64(export.size)
    if length != size && exact {
      throw BlockError(.notSupported, "Cannot resize NBD nodes")
    }
    if length > size { throw BlockError(.invalidArgument, "Cannot grow NBD nodes") }
  }

  /// Reopening keeps the connection; a read-only export cannot become
  /// writable.
  public func prepareReopen(_ node: BlockNode, _ request: inout BlockReopenRequest) async throws
    -> any BlockReopenChange
  {
    if !request.nodeOptions.readOnly && export.readOnly {
      throw BlockError(.permissionDenied, "Can't reopen read-only NBD mount as read/write")
    }
    return UnchangedReopen()
  }

  public func close(_ node: BlockNode) async {
    await closeConnections()
  }
}
