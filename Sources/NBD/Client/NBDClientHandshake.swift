import BlockCore
import NIOCore

/// What the client learned about the export in the handshake.
public struct NBDNegotiatedExport: Sendable, Equatable {
  /// The export's size in bytes.
  public var size: UInt64
  /// The transmission flags.
  public var flags: NBDTransmissionFlags
  /// INFO_BLOCK_SIZE's minimum, preferred and maximum (0: not sent).
  public var minimumBlock: UInt32 = 0
  /// The preferred block size (0: not sent).
  public var preferredBlock: UInt32 = 0
  /// The maximum block size (0: not sent).
  public var maximumBlock: UInt32 = 0
  /// Whether replies may be structured (always, with extended headers).
  public var structuredReplies = false
  /// Whether extended headers (32-byte requests and replies, 64-bit
  /// lengths) were negotiated.
  public var extendedHeaders = false
  /// The id of the metadata context block status reads, when one was
  /// negotiated (`base:allocation` or the `x-dirty-bitmap` context).
  public var contextID: UInt32?

  /// Whether the server serves the export read-only.
  public var readOnly: Bool { flags.contains(.readOnly) }
}

/// The client's side of the handshake, as QEMU 7.2's `nbd_receive_negotiate`:
/// fixed newstyle with NO_ZEROES, STRUCTURED_REPLY, SET_META_CONTEXT for one
/// context, then GO asking for INFO_BLOCK_SIZE; EXPORT_NAME when the server
/// is not fixed newstyle or answers GO with UNSUP; oldstyle servers for the
/// empty export name only. Errors carry QEMU's messages.
///
/// Beyond QEMU 7.2 (as QEMU 9's client): EXTENDED_HEADERS is asked for first
/// unless `extendedHeaders` is off; a server that answers UNSUP (qemu-nbd
/// 7.2, nbdkit 1.32) gets STRUCTURED_REPLY next, as before.
struct NBDClientHandshake {
  /// The export's name.
  let export: String
  /// The metadata context to select (nil: none).
  let context: String?
  /// Whether to ask for extended headers.
  var extendedHeaders = true
  /// TLS, started with STARTTLS before any other option (nil: none).
  var tls: NBDClientTLS?

  /// The magic of an oldstyle greeting, after NBDMAGIC.
  static let oldstyleMagic: UInt64 = 0x0042_0281_8612_53

  private typealias Writer = NBDClientChannel

  private static func failure(_ message: String) -> BlockError {
    BlockError(.invalidArgument, message)
  }

  /// Reads exactly `count` bytes; a peer that closes first is an error
  /// naming `what`.
  private func read(
    _ reader: inout NBDInboundReader, _ count: Int, _ what: String,
    isolation: isolated (any Actor)? = #isolation
  ) async throws -> ByteBuffer {
    guard let bytes = try await reader.read(count, isolation: isolation) else {
      throw Self.failure(
        "Failed to read \(what): Unexpected end-of-file before all data were read")
    }
    return bytes
  }

  /// Runs the handshake over a fresh connection.
  func run(
    _ reader: inout NBDInboundReader, _ outbound: NBDClientChannel,
    isolation: isolated (any Actor)? = #isolation
  ) async throws -> NBDNegotiatedExport {
    var greeting = try await read(&reader, 16, "initial magic")
    let magic = greeting.readInteger(as: UInt64.self)!
    guard magic == NBDProtocol.greetingMagic else {
      throw Self.failure("Bad initial magic received: 0x\(String(magic, radix: 16))")
    }
    let second = greeting.readInteger(as: UInt64.self)!
    if second == Self.oldstyleMagic {
      if tls != nil { throw Self.failure("Server does not support STARTTLS") }
      return try await oldstyle(&reader)
    }
    guard second == NBDProtocol.optionMagic else {
      throw Self.failure("Bad server magic received: 0x\(String(second, radix: 16))")
    }
    var flagBytes = try await read(&reader, 2, "server flags")
    let serverFlags = flagBytes.readInteger(as: UInt16.self)!
    let fixedNewstyle = serverFlags & 1 != 0
    let noZeroes = serverFlags & 2 != 0
    var clientFlags: UInt32 = 0
    if fixedNewstyle { clientFlags |= NBDProtocol.clientFixedNewstyle }
    if noZeroes { clientFlags |= NBDProtocol.clientNoZeroes }
    var flagsBuffer = ByteBuffer()
    flagsBuffer.writeInteger(clientFlags)
    try await outbound.write(flagsBuffer)
    do {
      return try await options(
        &reader, outbound, fixedNewstyle: fixedNewstyle, noZeroes: noZeroes)
    } catch let error as BlockError where fixedNewstyle {
      // As QEMU: a server that refused an option hears ABORT, not a bare
      // hang-up (qemu-nbd logs the latter as a failed negotiation).
      try? await sendOption(.abort, outbound)
      throw error
    }
  }

  /// The option phase after the client flags.
  private func options(
    _ reader: inout NBDInboundReader, _ outbound: NBDClientChannel, fixedNewstyle: Bool,
    noZeroes: Bool, isolation: isolated (any Actor)? = #isolation
  ) async throws -> NBDNegotiatedExport {
    if let tls {
      guard fixedNewstyle else { throw Self.failure("Server does not support STARTTLS") }
      try await startTLS(tls, &reader, outbound)
    }
    guard fixedNewstyle else {
      return try await exportName(&reader, outbound, noZeroes: noZeroes)
    }
    var extended = false
    if extendedHeaders {
      extended = try await simpleOption(.extendedHeaders, &reader, outbound)
    }
    var structured = extended
    if !extended {
      structured = try await simpleOption(.structuredReply, &reader, outbound)
    }
    var contextID: UInt32?
    if structured, let context {
      contextID = try await setMetaContext(context, &reader, outbound)
    }
    guard var export = try await go(&reader, outbound) else {
      // A server that took extended headers must take GO: EXPORT_NAME is
      // forbidden after them.
      if extended { throw Self.failure("Server does not support NBD_OPT_GO") }
      return try await exportName(&reader, outbound, noZeroes: noZeroes)
    }
    export.structuredReplies = structured
    export.extendedHeaders = extended
    export.contextID = contextID
    return export
  }

  /// STARTTLS as QEMU's `nbd_receive_starttls`: the option, its ACK, then
  /// the TLS handshake with `tls`; every later byte goes over TLS. (The
  /// export listing runs it too.)
  func startTLS(
    _ tls: NBDClientTLS, _ reader: inout NBDInboundReader, _ outbound: NBDClientChannel,
    isolation: isolated (any Actor)? = #isolation
  ) async throws {
    try await sendOption(.startTLS, outbound)
    let (header, payload) = try await reply(to: .startTLS, &reader)
    if header.type != NBDReplyType.ack.rawValue {
      guard try Self.checkError(header, payload) else {
        throw Self.failure("Server don't support STARTTLS option")
      }
      throw Self.failure("Server rejected request to start TLS \(String(header.type, radix: 16))")
    }
    guard header.length == 0 else {
      throw Self.failure("Start TLS response was not zero \(header.length)")
    }
    guard reader.unread.readableBytes == 0 else {
      throw Self.failure("Unexpected data from the server before the TLS handshake")
    }
    try await tls.start(on: outbound.channel, consumed: reader.received)
  }

  /// An oldstyle server: size, flags, 124 zero bytes; no export names.
  private func oldstyle(
    _ reader: inout NBDInboundReader, isolation: isolated (any Actor)? = #isolation
  ) async throws -> NBDNegotiatedExport {
    guard export.isEmpty else {
      throw Self.failure("Server does not support non-empty export names")
    }
    var bytes = try await read(&reader, 12 + 124, "export length")
    let size = bytes.readInteger(as: UInt64.self)!
    let flags = bytes.readInteger(as: UInt32.self)!
    guard flags & ~0xffff == 0 else {
      throw Self.failure("Unexpected export flags 0x\(String(flags, radix: 16))")
    }
    return NBDNegotiatedExport(size: size, flags: NBDTransmissionFlags(rawValue: UInt16(flags)))
  }

  private func sendOption(
    _ option: NBDOption, payload: ByteBuffer = ByteBuffer(), _ outbound: Writer,
    isolation: isolated (any Actor)? = #isolation
  ) async throws {
    var buffer = ByteBuffer()
    NBDOptionHeader.encode(option: option, payload: payload, into: &buffer)
    try await outbound.write(buffer)
  }

  /// EXPORT_NAME: the server answers with size and flags, or hangs up.
  private func exportName(
    _ reader: inout NBDInboundReader, _ outbound: Writer, noZeroes: Bool,
    isolation: isolated (any Actor)? = #isolation
  ) async throws -> NBDNegotiatedExport {
    try await sendOption(.exportName, payload: ByteBuffer(string: export), outbound)
    var bytes = try await read(&reader, 10 + (noZeroes ? 0 : 124), "export length")
    let size = bytes.readInteger(as: UInt64.self)!
    let flags = bytes.readInteger(as: UInt16.self)!
    return NBDNegotiatedExport(size: size, flags: NBDTransmissionFlags(rawValue: flags))
  }

  /// Reads one option reply (header and payload) for `option`.
  private func reply(
    to option: NBDOption, _ reader: inout NBDInboundReader,
    isolation: isolated (any Actor)? = #isolation
  ) async throws -> (NBDOptionReplyHeader, ByteBuffer) {
    var headerBytes = try await read(&reader, NBDOptionReplyHeader.size, "option reply")
    let header = NBDOptionReplyHeader.decode(&headerBytes)!
    guard header.magic == NBDProtocol.optionReplyMagic else {
      throw Self.failure("Unexpected option reply magic")
    }
    guard header.option == option.rawValue else {
      throw Self.failure(
        "Unexpected option type \(header.option) (\(NBDOption.name(of: header.option))), "
          + "expected \(option.rawValue) (\(NBDOption.name(of: option.rawValue)))")
    }
    guard header.length <= UInt32(NBDProtocol.maxBufferSize) else {
      throw Self.failure("server's reply is too long")
    }
    let payload = try await read(&reader, Int(header.length), "option reply payload")
    return (header, payload)
  }

  /// QEMU's `nbd_handle_reply_err`: UNSUP is "not supported" (false), every
  /// other error throws with QEMU's text and the server's message as a hint.
  static func checkError(_ header: NBDOptionReplyHeader, _ payload: ByteBuffer) throws
    -> Bool
  {
    guard header.isError else { return true }
    let option = "option \(header.option) (\(NBDOption.name(of: header.option)))"
    let message: String
    switch NBDReplyType(rawValue: header.type) {
    case .unsupported: return false
    case .policy: message = "Denied by server for \(option)"
    case .invalid: message = "Invalid parameters for \(option)"
    case .platform: message = "Server lacks support for \(option)"
    case .tlsRequired:
      message = "TLS negotiation required before \(option)\nDid you forget a valid tls-creds?"
    case .unknown: message = "Requested export not available"
    case .shutdown: message = "Server shutting down before \(option)"
    case .blockSizeRequired: message = "Server requires INFO_BLOCK_SIZE for \(option)"
    case .tooBig: message = "\(option) request too large"
    default: message = "Unknown error code when asking for \(option)"
    }
    let text = payload.getString(at: payload.readerIndex, length: payload.readableBytes) ?? ""
    throw failure(text.isEmpty ? message : "\(message)\nserver reported: \(text)")
  }

  /// An option without payload answered by ACK (true) or UNSUP (false).
  private func simpleOption(
    _ option: NBDOption, _ reader: inout NBDInboundReader, _ outbound: Writer,
    isolation: isolated (any Actor)? = #isolation
  ) async throws -> Bool {
    try await sendOption(option, outbound)
    let (header, payload) = try await reply(to: option, &reader)
    guard try Self.checkError(header, payload) else { return false }
    guard header.type == NBDReplyType.ack.rawValue, header.length == 0 else {
      throw Self.failure("Server sent invalid reply to \(NBDOption.name(of: option.rawValue))")
    }
    return true
  }

  /// SET_META_CONTEXT for one context: its id, or nil when the server
  /// does not have it.
  private func setMetaContext(
    _ context: String, _ reader: inout NBDInboundReader, _ outbound: Writer,
    isolation: isolated (any Actor)? = #isolation
  ) async throws -> UInt32? {
    var payload = ByteBuffer()
    payload.writeInteger(UInt32(export.utf8.count))
    payload.writeString(export)
    payload.writeInteger(UInt32(1))
    payload.writeInteger(UInt32(context.utf8.count))
    payload.writeString(context)
    try await sendOption(.setMetaContext, payload: payload, outbound)
    var selected: UInt32?
    while true {
      var (header, body) = try await reply(to: .setMetaContext, &reader)
      guard try Self.checkError(header, body) else { return nil }
      if header.type == NBDReplyType.ack.rawValue { return selected }
      guard header.type == NBDReplyType.metaContext.rawValue, header.length >= 4 else {
        throw Self.failure("Unexpected reply type \(header.type) to set meta context")
      }
      let id = body.readInteger(as: UInt32.self)!
      let name = body.readString(length: body.readableBytes) ?? ""
      guard name == context else {
        throw Self.failure(
          "Failed to negotiate meta context '\(context)', server answered with different context '\(name)'"
        )
      }
      guard selected == nil else {
        throw Self.failure("Server replied with more than one context")
      }
      selected = id
    }
  }

  /// GO with INFO_BLOCK_SIZE requested: the export, or nil when the server
  /// does not support GO.
  private func go(
    _ reader: inout NBDInboundReader, _ outbound: Writer,
    isolation: isolated (any Actor)? = #isolation
  ) async throws -> NBDNegotiatedExport? {
    var payload = ByteBuffer()
    payload.writeInteger(UInt32(export.utf8.count))
    payload.writeString(export)
    payload.writeInteger(UInt16(1))
    payload.writeInteger(NBDInfoType.blockSize.rawValue)
    try await sendOption(.go, payload: payload, outbound)
    var export: NBDNegotiatedExport?
    var sizes: (UInt32, UInt32, UInt32)?
    while true {
      var (header, body) = try await reply(to: .go, &reader)
      guard try Self.checkError(header, body) else { return nil }
      if header.type == NBDReplyType.ack.rawValue {
        guard header.length == 0 else { throw Self.failure("server sent invalid NBD_REP_ACK") }
        guard var result = export else {
          throw Self.failure("broken server omitted NBD_INFO_EXPORT")
        }
        if let (minimum, preferred, maximum) = sizes {
          result.minimumBlock = minimum
          result.preferredBlock = preferred
          result.maximumBlock = maximum
        }
        return result
      }
      guard header.type == NBDReplyType.info.rawValue else {
        throw Self.failure(
          "unexpected reply type \(header.type), expected \(NBDReplyType.info.rawValue)")
      }
      guard header.length >= 2 else {
        throw Self.failure("NBD_REP_INFO length \(header.length) is too short")
      }
      let type = body.readInteger(as: UInt16.self)!
      switch NBDInfoType(rawValue: type) {
      case .export:
        guard body.readableBytes == 10 else {
          throw Self.failure("remaining export info len \(body.readableBytes) is unexpected size")
        }
        export = NBDNegotiatedExport(
          size: body.readInteger(as: UInt64.self)!,
          flags: NBDTransmissionFlags(rawValue: body.readInteger(as: UInt16.self)!))
      case .blockSize:
        guard body.readableBytes == 12 else {
          throw Self.failure("remaining export info len \(body.readableBytes) is unexpected size")
        }
        let minimum = body.readInteger(as: UInt32.self)!
        let preferred = body.readInteger(as: UInt32.self)!
        let maximum = body.readInteger(as: UInt32.self)!
        try Self.checkBlockSizes(minimum, preferred, maximum)
        sizes = (minimum, preferred, maximum)
      default:
        break  // NAME, DESCRIPTION and unknown types are ignored.
      }
    }
  }

  /// QEMU's checks of INFO_BLOCK_SIZE.
  private static func checkBlockSizes(_ minimum: UInt32, _ preferred: UInt32, _ maximum: UInt32)
    throws
  {
    func isPowerOfTwo(_ value: UInt32) -> Bool { value != 0 && value & (value - 1) == 0 }
    guard isPowerOfTwo(minimum) else {
      throw failure("server minimum block size \(minimum) is not a power of two")
    }
    guard isPowerOfTwo(preferred) else {
      throw failure("server preferred block size \(preferred) is not a power of two")
    }
    guard preferred >= minimum else {
      throw failure("server preferred block size \(preferred) is smaller than minimum \(minimum)")
    }
    guard maximum >= preferred, maximum % minimum == 0 else {
      throw failure("server maximum block size \(maximum) is not a multiple of minimum \(minimum)")
    }
  }
}
