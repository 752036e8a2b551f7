import BlockCore
import NIOCore
import NIOPosix

/// One export as a server describes it to a client that lists its exports
/// (`qemu-nbd -L`): LIST's name and description, then what INFO and
/// LIST_META_CONTEXT told about it.
public struct NBDListedExport: Sendable, Equatable {
  /// The export's name.
  public var name: String
  /// The description LIST sent with the name (nil: none).
  public var description: String?
  /// The size INFO_EXPORT sent (0 when INFO did not answer).
  public var size: UInt64 = 0
  /// The transmission flags INFO_EXPORT sent (0 when INFO did not answer).
  public var flags: UInt16 = 0
  /// INFO_BLOCK_SIZE's minimum (0: not sent).
  public var minimumBlock: UInt32 = 0
  /// INFO_BLOCK_SIZE's preferred size (0: not sent).
  public var preferredBlock: UInt32 = 0
  /// INFO_BLOCK_SIZE's maximum (0: not sent).
  public var maximumBlock: UInt32 = 0
  /// The metadata contexts LIST_META_CONTEXT named, in the server's order.
  public var contexts: [String] = []

  /// An export known by name only (an oldstyle server's, or LIST's before
  /// INFO).
  public init(name: String, description: String? = nil) {
    self.name = name
    self.description = description
  }
}

/// Lists a server's exports as QEMU 7.2's `nbd_receive_export_list` does
/// for `qemu-nbd -L`: fixed newstyle with NO_ZEROES, STRUCTURED_REPLY (its
/// refusal is no error), LIST, then INFO asking for INFO_BLOCK_SIZE for each
/// export (stopping at the first UNSUP) and, with structured replies,
/// LIST_META_CONTEXT with no query (and again with `qemu:` when no `qemu:`
/// context came, QEMU's workaround for qemu 3.0), then ABORT without
/// waiting for its reply. An oldstyle server's one export is described by
/// its greeting (then DISC); a newstyle server that is not fixed cannot
/// list. Failures throw ``BlockError``s with QEMU's messages.
public enum NBDExportListing {
  /// Connects to `address` and lists its exports (after STARTTLS with `tls`).
  public static func list(_ address: NBDServerAddress, tls: NBDClientTLS? = nil) async throws
    -> [NBDListedExport]
  {
    let loop = MultiThreadedEventLoopGroup.singleton.next()
    let runner = NBDListingRunner(on: loop)
    return try await withConnectedNBDSocket(to: address, on: loop) { socket in
      let exports = try await runner.run(over: socket, tls: tls)
      socket.close()
      return exports
    }
  }
}

/// Runs a listing on the socket's event loop (as ``NBDClientNegotiation``:
/// no hop through Swift's shared pool).
private actor NBDListingRunner {
  private let loop: any EventLoop

  init(on loop: any EventLoop) {
    self.loop = loop
  }

  nonisolated var unownedExecutor: UnownedSerialExecutor {
    loop.executor.asUnownedSerialExecutor()
  }

  func run(over socket: NBDClientChannel, tls: NBDClientTLS?) async throws -> [NBDListedExport] {
    var session = NBDListingSession(socket: socket, tls: tls)
    return try await session.run()
  }
}

/// The listing's conversation over one socket.
private struct NBDListingSession {
  private let socket: NBDClientChannel
  private var reader: NBDInboundReader
  private let tls: NBDClientTLS?

  init(socket: NBDClientChannel, tls: NBDClientTLS?) {
    self.socket = socket
    self.tls = tls
    reader = NBDInboundReader(socket.inbound)
  }

  private static func failure(_ message: String) -> BlockError {
    BlockError(.invalidArgument, message)
  }

  private mutating func read(
    _ count: Int, _ what: String, isolation: isolated (any Actor)? = #isolation
  ) async throws -> ByteBuffer {
    guard let bytes = try await reader.read(count) else {
      throw Self.failure(
        "Failed to read \(what): Unexpected end-of-file before all data were read")
    }
    return bytes
  }

  private mutating func send(
    _ option: NBDOption, _ payload: ByteBuffer = ByteBuffer(),
    isolation: isolated (any Actor)? = #isolation
  ) async throws {
    var buffer = ByteBuffer()
    NBDOptionHeader.encode(option: option, payload: payload, into: &buffer)
    try await socket.write(buffer)
  }

  /// NBD_OPT_ABORT as QEMU sends it before hanging up: not waiting for a
  /// reply, ignoring failures.
  private mutating func abort(isolation: isolated (any Actor)? = #isolation) async {
    try? await send(.abort)
  }

  /// An option reply's header for `option` (QEMU's
  /// `nbd_receive_option_reply`); the payload is left unread.
  private mutating func replyHeader(
    _ option: NBDOption, isolation: isolated (any Actor)? = #isolation
  ) async throws -> NBDOptionReplyHeader {
    var bytes = try await read(NBDOptionReplyHeader.size, "option reply")
    let header = NBDOptionReplyHeader.decode(&bytes)!
    guard header.magic == NBDProtocol.optionReplyMagic else {
      await abort()
      throw Self.failure("Unexpected option reply magic")
    }
    guard header.option == option.rawValue else {
      await abort()
      throw Self.failure(
        "Unexpected option type \(header.option) (\(NBDOption.name(of: header.option))), "
          + "expected \(option.rawValue) (\(NBDOption.name(of: option.rawValue)))")
    }
    return header
  }

  /// QEMU's `nbd_handle_reply_err`: true for a success reply; for an error
  /// its message is read, then false when `strict` is off or it is UNSUP,
  /// else it throws QEMU's text.
  private mutating func succeeded(
    _ header: NBDOptionReplyHeader, strict: Bool, isolation: isolated (any Actor)? = #isolation
  ) async throws -> Bool {
    guard header.isError else { return true }
    guard header.length <= UInt32(NBDProtocol.maxBufferSize) else {
      await abort()
      throw Self.failure(
        "server error \(header.type) (\(Self.replyName(header.type))) message is too long")
    }
    let message = try await read(Int(header.length), "option error message")
    guard strict else { return false }
    do {
      return try NBDClientHandshake.checkError(header, message)
    } catch {
      await abort()
      throw error
    }
  }

  /// QEMU's `nbd_rep_lookup`.
  private static func replyName(_ type: UInt32) -> String {
    switch NBDReplyType(rawValue: type) {
    case .ack: "ack"
    case .server: "server"
    case .info: "info"
    case .metaContext: "meta context"
    case .unsupported: "unsupported"
    case .policy: "denied by policy"
    case .invalid: "invalid"
    case .platform: "platform lacks support"
    case .tlsRequired: "TLS required"
    case .unknown: "export unknown"
    case .shutdown: "server shutting down"
    case .blockSizeRequired: "block size required"
    case .tooBig: "option payload too big"
    // QEMU 7.2 predates NBD_REP_ERR_EXT_HEADER_REQD and names it as any
    // unknown type.
    case .extendedHeaderRequired, nil: "<unknown>"
    }
  }

  private mutating func unexpected(
    _ type: UInt32, expected: NBDReplyType, isolation: isolated (any Actor)? = #isolation
  ) async -> BlockError {
    await abort()
    return Self.failure(
      "Unexpected reply type \(type) (\(Self.replyName(type))), expected "
        + "\(expected.rawValue) (\(Self.replyName(expected.rawValue)))")
  }

  mutating func run(isolation: isolated (any Actor)? = #isolation) async throws -> [NBDListedExport]
  {
    var greeting = try await read(16, "initial magic")
    let magic = greeting.readInteger(as: UInt64.self)!
    guard magic == NBDProtocol.greetingMagic else {
      throw Self.failure("Bad initial magic received: 0x\(String(magic, radix: 16))")
    }
    let second = greeting.readInteger(as: UInt64.self)!
    if second == NBDClientHandshake.oldstyleMagic {
      if tls != nil { throw Self.failure("Server does not support STARTTLS") }
      return try await oldstyle()
    }
    guard second == NBDProtocol.optionMagic else {
      throw Self.failure("Bad server magic received: 0x\(String(second, radix: 16))")
    }
    var flagBytes = try await read(2, "server flags")
    let serverFlags = flagBytes.readInteger(as: UInt16.self)!
    var clientFlags: UInt32 = 0
    if serverFlags & 1 != 0 { clientFlags |= NBDProtocol.clientFixedNewstyle }
    if serverFlags & 2 != 0 { clientFlags |= NBDProtocol.clientNoZeroes }
    var flagsBuffer = ByteBuffer()
    flagsBuffer.writeInteger(clientFlags)
    try await socket.write(flagsBuffer)
    if let tls {
      guard serverFlags & 1 != 0 else { throw Self.failure("Server does not support STARTTLS") }
      try await NBDClientHandshake(export: "", context: nil).startTLS(tls, &reader, socket)
    }
    guard serverFlags & 1 != 0 else {
      throw Self.failure("Server does not support export lists")
    }
    let structured = try await structuredReply()
    var exports = try await listNames()
    for index in exports.indices {
      guard try await info(&exports[index]) else { break }
      if structured { exports[index].contexts = try await metaContexts(exports[index].name) }
    }
    await abort()
    return exports
  }

  /// An oldstyle server's lone export: its size and flags; then DISC.
  private mutating func oldstyle(isolation: isolated (any Actor)? = #isolation) async throws
    -> [NBDListedExport]
  {
    var bytes = try await read(12, "export length")
    var export = NBDListedExport(name: "")
    export.size = bytes.readInteger(as: UInt64.self)!
    let flags = bytes.readInteger(as: UInt32.self)!
    guard flags & ~0xffff == 0 else {
      throw Self.failure("Unexpected export flags \(String(flags, radix: 16))")
    }
    export.flags = UInt16(flags)
    if (try? await reader.read(124)) != nil {
      var request = ByteBuffer()
      request.writeInteger(NBDProtocol.requestMagic)
      request.writeInteger(UInt16(0))
      request.writeInteger(NBDCommand.disconnect.rawValue)
      request.writeInteger(UInt64(0))
      request.writeInteger(UInt64(0))
      request.writeInteger(UInt32(0))
      try? await socket.write(request)
    }
    return [export]
  }

  /// STRUCTURED_REPLY, any error meaning "not supported".
  private mutating func structuredReply(isolation: isolated (any Actor)? = #isolation) async throws
    -> Bool
  {
    try await send(.structuredReply)
    let header = try await replyHeader(.structuredReply)
    guard try await succeeded(header, strict: false) else { return false }
    guard header.type == NBDReplyType.ack.rawValue else {
      await abort()
      throw Self.failure(
        "Server answered option \(NBDOption.structuredReply.rawValue) (structured reply) "
          + "with unexpected reply \(header.type) (\(Self.replyName(header.type)))")
    }
    guard header.length == 0 else {
      await abort()
      throw Self.failure(
        "Option \(NBDOption.structuredReply.rawValue) ('structured reply') response length "
          + "is \(header.length) (it should be zero)")
    }
    return true
  }

  /// LIST: the names and descriptions, in the server's order.
  private mutating func listNames(isolation: isolated (any Actor)? = #isolation) async throws
    -> [NBDListedExport]
  {
    try await send(.list)
    var exports: [NBDListedExport] = []
    while true {
      let header = try await replyHeader(.list)
      guard try await succeeded(header, strict: true) else { return exports }
      if header.type == NBDReplyType.ack.rawValue {
        guard header.length == 0 else {
          await abort()
          throw Self.failure("length too long for option end")
        }
        return exports
      }
      guard header.type == NBDReplyType.server.rawValue else {
        throw await unexpected(header.type, expected: .server)
      }
      guard header.length >= 4, header.length <= UInt32(NBDProtocol.maxBufferSize) else {
        await abort()
        throw Self.failure("incorrect option length \(header.length)")
      }
      var lengthBytes = try await read(4, "option name length")
      let nameLength = lengthBytes.readInteger(as: UInt32.self)!
      let rest = header.length - 4
      guard nameLength <= rest, nameLength <= UInt32(NBDProtocol.maxStringSize) else {
        await abort()
        throw Self.failure("incorrect name length in server's list response")
      }
      var nameBytes = try await read(Int(nameLength), "export name")
      var export = NBDListedExport(name: nameBytes.readString(length: Int(nameLength)) ?? "")
      let descriptionLength = rest - nameLength
      if descriptionLength > 0 {
        guard descriptionLength <= UInt32(NBDProtocol.maxStringSize) else {
          await abort()
          throw Self.failure("incorrect description length in server's list response")
        }
        var bytes = try await read(Int(descriptionLength), "export description")
        export.description = bytes.readString(length: Int(descriptionLength))
      }
      exports.append(export)
    }
  }

  /// INFO with INFO_BLOCK_SIZE requested: false when the server does not
  /// support INFO (the listing then stops asking).
  private mutating func info(
    _ export: inout NBDListedExport, isolation: isolated (any Actor)? = #isolation
  ) async throws -> Bool {
    var payload = ByteBuffer()
    payload.writeInteger(UInt32(export.name.utf8.count))
    payload.writeString(export.name)
    payload.writeInteger(UInt16(1))
    payload.writeInteger(NBDInfoType.blockSize.rawValue)
    try await send(.info, payload)
    export.flags = 0
    while true {
      let header = try await replyHeader(.info)
      guard try await succeeded(header, strict: true) else { return false }
      if header.type == NBDReplyType.ack.rawValue {
        guard header.length == 0 else { throw Self.failure("server sent invalid NBD_REP_ACK") }
        guard export.flags != 0 else {
          throw Self.failure("broken server omitted NBD_INFO_EXPORT")
        }
        return true
      }
      guard header.type == NBDReplyType.info.rawValue else {
        throw await unexpected(header.type, expected: .info)
      }
      guard header.length >= 2 else {
        await abort()
        throw Self.failure("NBD_REP_INFO length \(header.length) is too short")
      }
      guard header.length <= UInt32(NBDProtocol.maxBufferSize) else {
        await abort()
        throw Self.failure("server's reply is too long")
      }
      var body = try await read(Int(header.length), "info")
      let type = body.readInteger(as: UInt16.self)!
      switch NBDInfoType(rawValue: type) {
      case .export:
        guard body.readableBytes == 10 else {
          await abort()
          throw Self.failure("remaining export info len \(body.readableBytes) is unexpected size")
        }
        export.size = body.readInteger(as: UInt64.self)!
        export.flags = body.readInteger(as: UInt16.self)!
        if export.minimumBlock != 0, export.size % UInt64(export.minimumBlock) != 0 {
          await abort()
          throw Self.failure(
            "export size \(export.size) is not multiple of minimum block size "
              + "\(export.minimumBlock)")
        }
      case .blockSize:
        guard body.readableBytes == 12 else {
          await abort()
          throw Self.failure("remaining export info len \(body.readableBytes) is unexpected size")
        }
        let minimum = body.readInteger(as: UInt32.self)!
        let preferred = body.readInteger(as: UInt32.self)!
        let maximum = body.readInteger(as: UInt32.self)!
        // QEMU 7.2's checks (a maximum need not be a multiple of the
        // minimum: nbdkit sends 0xffffffff).
        let problem: String? =
          if minimum == 0 || minimum & (minimum - 1) != 0 {
            "server minimum block size \(minimum) is not a power of two"
          } else if preferred == 0 || preferred & (preferred - 1) != 0 || preferred < minimum {
            "server preferred block size \(preferred) is not valid"
          } else if maximum < minimum {
            "server maximum block size \(maximum) is not valid"
          } else {
            nil
          }
        if let problem {
          await abort()
          throw Self.failure(problem)
        }
        (export.minimumBlock, export.preferredBlock, export.maximumBlock) =
          (minimum, preferred, maximum)
      default:
        break  // NAME, DESCRIPTION and unknown types are skipped.
      }
    }
  }

  /// LIST_META_CONTEXT for `name`: every context the server lists for no
  /// query (any error ends the list quietly, as QEMU's non-strict reading).
  private mutating func metaContexts(_ name: String, isolation: isolated (any Actor)? = #isolation)
    async throws -> [String]
  {
    var contexts: [String] = []
    var askedQemu = false
    try await sendMetaQuery(name, query: nil)
    while true {
      guard let context = try await oneMetaContext() else {
        if !contexts.isEmpty && !askedQemu {
          askedQemu = true
          try await sendMetaQuery(name, query: "qemu:")
          continue
        }
        return contexts
      }
      askedQemu = askedQemu || context.hasPrefix("qemu:")
      contexts.append(context)
    }
  }

  private mutating func sendMetaQuery(
    _ name: String, query: String?, isolation: isolated (any Actor)? = #isolation
  ) async throws {
    var payload = ByteBuffer()
    payload.writeInteger(UInt32(name.utf8.count))
    payload.writeString(name)
    payload.writeInteger(UInt32(query == nil ? 0 : 1))
    if let query {
      payload.writeInteger(UInt32(query.utf8.count))
      payload.writeString(query)
    }
    try await send(.listMetaContext, payload)
  }

  /// One META_CONTEXT reply's name; nil at the ACK or an error.
  private mutating func oneMetaContext(isolation: isolated (any Actor)? = #isolation) async throws
    -> String?
  {
    let header = try await replyHeader(.listMetaContext)
    guard try await succeeded(header, strict: false) else { return nil }
    if header.type == NBDReplyType.ack.rawValue {
      guard header.length == 0 else {
        await abort()
        throw Self.failure("Unexpected length to ACK response")
      }
      return nil
    }
    guard header.type == NBDReplyType.metaContext.rawValue else {
      throw await unexpected(header.type, expected: .metaContext)
    }
    guard header.length > 4, header.length <= UInt32(NBDProtocol.maxBufferSize) else {
      await abort()
      throw Self.failure(
        "Failed to negotiate meta context, server answered with unexpected length "
          + "\(header.length)")
    }
    _ = try await read(4, "context id")
    var name = try await read(Int(header.length) - 4, "context name")
    return name.readString(length: name.readableBytes) ?? ""
  }
}
