import NIOCore

/// The option haggling of the fixed newstyle handshake, as a pure state
/// machine: each option in, the reply bytes and what happens next out.
///
/// It follows qemu-nbd 7.2 (`nbd_negotiate_options`): one export; unknown
/// options get UNSUP and negotiation goes on; STARTTLS gets POLICY without
/// TLS credentials, and with them (`requiresTLS`, qemu-nbd's forced TLS)
/// every other option before it gets TLS_REQD; SET_META_CONTEXT needs structured replies; strings are at most 4096 bytes.
///
/// Beyond qemu-nbd 7.2 (unless `offersExtendedHeaders` is off, when option
/// 11 gets UNSUP as from 7.2): EXTENDED_HEADERS as QEMU 8.2+ answers it (ACK,
/// also after STRUCTURED_REPLY; INVALID when repeated; STRUCTURED_REPLY
/// afterwards gets EXT_HEADER_REQD; EXPORT_NAME afterwards drops the client).
public struct NBDNegotiator: Sendable {
  /// What the server does after an option.
  public enum Outcome: Sendable {
    /// Send the bytes and read the next option.
    case reply(ByteBuffer)
    /// Send the bytes, then close the connection (ABORT).
    case replyAndClose(ByteBuffer)
    /// Send the bytes and start transmission (GO, EXPORT_NAME).
    case transmission(ByteBuffer)
    /// Drop the connection at once, for the reason given.
    case disconnect(String)
    /// Send the bytes (STARTTLS's ACK) in plain text, then run the TLS
    /// handshake, call ``tlsStarted()`` and read the next option over TLS.
    case startTLS(ByteBuffer)
  }

  /// The export offered.
  public let export: NBDExportInfo
  /// Whether the client sent NBD_FLAG_C_FIXED_NEWSTYLE.
  public private(set) var fixedNewstyle = false
  /// Whether the client sent NBD_FLAG_C_NO_ZEROES.
  public private(set) var noZeroes = false
  /// Whether option 11 (EXTENDED_HEADERS) is answered; off, it gets UNSUP.
  public let offersExtendedHeaders: Bool
  /// The headers transmission will use.
  public private(set) var mode: NBDHeaderMode = .simple
  /// Whether structured replies are negotiated (extended headers imply them).
  public var structuredReplies: Bool { mode >= .structured }
  /// Whether extended headers are negotiated.
  public var extendedHeaders: Bool { mode == .extended }
  /// Whether SET_META_CONTEXT selected `base:allocation`.
  public private(set) var baseAllocation = false
  /// Whether SET_META_CONTEXT selected `qemu:allocation-depth` (offered with -A).
  public private(set) var allocationDepth = false
  /// The indices in ``NBDExportInfo/bitmaps`` of the `qemu:dirty-bitmap:`
  /// contexts SET_META_CONTEXT selected, in ascending order.
  public private(set) var selectedBitmaps: [Int] = []
  /// Whether the client asked for block sizes in its GO (it must then obey them).
  public private(set) var blockSizeRequested = false
  /// Whether the server has TLS credentials: then no option but STARTTLS
  /// and ABORT is served before TLS runs.
  public let requiresTLS: Bool
  /// Whether the connection runs over TLS.
  public private(set) var tlsActive = false

  /// A negotiator for one connection; `offersExtendedHeaders` off answers
  /// EXTENDED_HEADERS with UNSUP, as qemu-nbd 7.2; `requiresTLS` when the
  /// server has TLS credentials.
  public init(export: NBDExportInfo, offersExtendedHeaders: Bool = true, requiresTLS: Bool = false)
  {
    self.export = export
    self.offersExtendedHeaders = offersExtendedHeaders
    self.requiresTLS = requiresTLS
  }

  /// Records that the TLS handshake after STARTTLS succeeded.
  public mutating func tlsStarted() { tlsActive = true }

  /// Takes the client flags; returns why the connection must be dropped, or nil.
  public mutating func receiveClientFlags(_ flags: UInt32) -> String? {
    let known = NBDProtocol.clientFixedNewstyle | NBDProtocol.clientNoZeroes
    if flags & ~known != 0 {
      return "Unknown client flags 0x\(String(flags & ~known, radix: 16)) received"
    }
    fixedNewstyle = flags & NBDProtocol.clientFixedNewstyle != 0
    noZeroes = flags & NBDProtocol.clientNoZeroes != 0
    return nil
  }

  /// Handles one option whose whole payload has been read.
  public mutating func handle(option: UInt32, payload: ByteBuffer) -> Outcome {
    if requiresTLS && !tlsActive { return beforeTLS(option: option, payload: payload) }
    let name = NBDOption.name(of: option)
    guard fixedNewstyle || option == NBDOption.exportName.rawValue else {
      return .disconnect("Unsupported option \(option) (\(name))")
    }
    var out = ByteBuffer()
    func error(_ type: NBDReplyType, _ message: String) -> Outcome {
      NBDEncoding.optionError(&out, option: option, type: type, message: message)
      return .reply(out)
    }
    let unexpectedLength = "option '\(name)' has unexpected length"
    switch NBDOption(rawValue: option) {
    case .exportName:
      return exportName(payload)
    case .abort:
      NBDEncoding.optionReply(&out, option: option, type: .ack)
      return .replyAndClose(out)
    case .list:
      guard payload.readableBytes == 0 else { return error(.invalid, unexpectedLength) }
      var server = ByteBuffer()
      server.writeInteger(UInt32(export.name.utf8.count))
      server.writeString(export.name)
      if let description = export.description { server.writeString(description) }
      NBDEncoding.optionReply(&out, option: option, type: .server, payload: server)
      NBDEncoding.optionReply(&out, option: option, type: .ack)
      return .reply(out)
    case .startTLS:
      guard payload.readableBytes == 0 else { return .disconnect(unexpectedLength) }
      if requiresTLS { return error(.invalid, "TLS already enabled") }
      return error(.policy, "TLS not configured")
    case .info, .go:
      return infoOrGo(option: option, payload: payload)
    case .structuredReply:
      guard payload.readableBytes == 0 else { return error(.invalid, unexpectedLength) }
      if extendedHeaders {
        return error(.extendedHeaderRequired, "extended headers already negotiated")
      }
      if structuredReplies { return error(.invalid, "structured reply already negotiated") }
      mode = .structured
      NBDEncoding.optionReply(&out, option: option, type: .ack)
      return .reply(out)
    case .extendedHeaders where offersExtendedHeaders:
      guard payload.readableBytes == 0 else { return error(.invalid, unexpectedLength) }
      if extendedHeaders { return error(.invalid, "extended headers already negotiated") }
      mode = .extended
      NBDEncoding.optionReply(&out, option: option, type: .ack)
      return .reply(out)
    case .listMetaContext, .setMetaContext:
      return metaContext(option: option, payload: payload)
    case .extendedHeaders:
      // Switched off: qemu-nbd 7.2's answer, which does not know its name.
      return error(.unsupported, "Unsupported option \(option) (<unknown>)")
    case .peekExport, nil:
      return error(.unsupported, "Unsupported option \(option) (\(name))")
    }
  }

  /// An option before TLS when TLS is required (qemu-nbd 7.2's forced TLS):
  /// STARTTLS starts it; EXPORT_NAME, which cannot carry an error, drops
  /// the client; anything else gets TLS_REQD, and ABORT closes after it.
  private func beforeTLS(option: UInt32, payload: ByteBuffer) -> Outcome {
    let hex = "0x" + String(option, radix: 16)
    guard fixedNewstyle else { return .disconnect("Unsupported option \(hex)") }
    var out = ByteBuffer()
    switch NBDOption(rawValue: option) {
    case .startTLS:
      guard payload.readableBytes == 0 else {
        return .disconnect("option 'starttls' has unexpected length")
      }
      NBDEncoding.optionReply(&out, option: option, type: .ack)
      return .startTLS(out)
    case .exportName:
      return .disconnect("Option \(hex) not permitted before TLS")
    default:
      NBDEncoding.optionError(
        &out, option: option, type: .tlsRequired, message: "Option \(hex) not permitted before TLS")
      return option == NBDOption.abort.rawValue ? .replyAndClose(out) : .reply(out)
    }
  }

  /// EXPORT_NAME: the name is the whole payload; no error reply is possible
  /// (after extended headers, which forbid it, the client is dropped).
  private func exportName(_ payload: ByteBuffer) -> Outcome {
    if extendedHeaders { return .disconnect("Extended headers already negotiated") }
    guard payload.readableBytes <= NBDProtocol.maxStringSize else {
      return .disconnect("Bad length received")
    }
    let name = String(buffer: payload)
    guard name == export.name else { return .disconnect("export not found") }
    var out = ByteBuffer()
    out.writeInteger(export.size)
    out.writeInteger(export.transmissionFlags(mode: mode).rawValue)
    if !noZeroes { out.writeRepeatingByte(0, count: 124) }
    return .transmission(out)
  }

  /// A u32-length-prefixed string from an option's payload.
  private enum PayloadString {
    case text(String)
    /// Longer than 4096 bytes (the length given).
    case tooLong(UInt32)
    /// The payload ends first.
    case truncated
  }

  private static func readString(_ payload: inout ByteBuffer) -> PayloadString {
    guard let length = payload.readInteger(as: UInt32.self) else { return .truncated }
    guard length <= NBDProtocol.maxStringSize else { return .tooLong(length) }
    guard let text = payload.readString(length: Int(length)) else { return .truncated }
    return .text(text)
  }

  /// INFO and GO: NAME (if asked), DESCRIPTION, BLOCK_SIZE, EXPORT, ACK.
  private mutating func infoOrGo(option: UInt32, payload: ByteBuffer) -> Outcome {
    var payload = payload
    var out = ByteBuffer()
    let optionName = NBDOption.name(of: option)
    func error(_ type: NBDReplyType, _ message: String) -> Outcome {
      NBDEncoding.optionError(&out, option: option, type: type, message: message)
      return .reply(out)
    }
    let name: String
    switch Self.readString(&payload) {
    case .text(let text): name = text
    case .tooLong(let length): return error(.invalid, "Invalid name length: \(length)")
    case .truncated: return error(.invalid, "option '\(optionName)' has unexpected length")
    }
    guard let count = payload.readInteger(as: UInt16.self),
      payload.readableBytes == Int(count) * 2
    else {
      return error(.invalid, "option '\(optionName)' has unexpected length")
    }
    var requests: [UInt16] = []
    for _ in 0..<count { requests.append(payload.readInteger(as: UInt16.self)!) }
    guard name == export.name else { return error(.unknown, "export '\(name)' not present") }
    let isInfo = option == NBDOption.info.rawValue
    let asksSizes = requests.contains(NBDInfoType.blockSize.rawValue)
    if requests.contains(NBDInfoType.name.rawValue) {
      NBDEncoding.info(&out, option: option, type: .name, body: ByteBuffer(string: export.name))
    }
    if let description = export.description {
      NBDEncoding.info(
        &out, option: option, type: .description, body: ByteBuffer(string: description))
    }
    let sizes = export.blockSizes(clientAsked: isInfo || asksSizes)
    var body = ByteBuffer()
    body.writeInteger(sizes.minimum)
    body.writeInteger(sizes.preferred)
    body.writeInteger(sizes.maximum)
    NBDEncoding.info(&out, option: option, type: .blockSize, body: body)
    body.clear()
    body.writeInteger(export.size)
    body.writeInteger(export.transmissionFlags(mode: mode).rawValue)
    NBDEncoding.info(&out, option: option, type: .export, body: body)
    // As qemu-nbd: an INFO that should have asked for block sizes gets
    // them and the export's size and flags, then the error instead of ACK.
    if isInfo && !asksSizes && export.requestAlignment > 1 {
      return error(.blockSizeRequired, "request NBD_INFO_BLOCK_SIZE to use this export")
    }
    NBDEncoding.optionReply(&out, option: option, type: .ack)
    if isInfo { return .reply(out) }
    blockSizeRequested = asksSizes
    return .transmission(out)
  }

  /// LIST_META_CONTEXT and SET_META_CONTEXT: `base:allocation`,
  /// `qemu:allocation-depth` and `qemu:dirty-bitmap:NAME` when the export
  /// offers them, matched as qemu-nbd 7.2 does (`base:`, `qemu:` and
  /// `qemu:dirty-bitmap:` list everything in their namespace; SET takes
  /// exact names only; no query lists every context). LIST answers each
  /// context with id 0, SET with its id.
  private mutating func metaContext(option: UInt32, payload: ByteBuffer) -> Outcome {
    var payload = payload
    var out = ByteBuffer()
    let optionName = NBDOption.name(of: option)
    func error(_ type: NBDReplyType, _ message: String) -> Outcome {
      NBDEncoding.optionError(&out, option: option, type: type, message: message)
      return .reply(out)
    }
    let isSet = option == NBDOption.setMetaContext.rawValue
    if isSet && !structuredReplies {
      return error(
        .invalid, "request option '\(optionName)' when structured reply is not negotiated")
    }
    let unexpected = "option '\(optionName)' has unexpected length"
    let name: String
    switch Self.readString(&payload) {
    case .text(let text): name = text
    case .tooLong(let length): return error(.invalid, "Invalid name length: \(length)")
    case .truncated: return error(.invalid, unexpected)
    }
    guard let count = payload.readInteger(as: UInt32.self) else {
      return error(.invalid, unexpected)
    }
    var queries: [String] = []
    for _ in 0..<count {
      switch Self.readString(&payload) {
      case .text(let query): queries.append(query)
      case .tooLong(let length): return error(.invalid, "Invalid query length: \(length)")
      case .truncated: return error(.invalid, unexpected)
      }
    }
    guard payload.readableBytes == 0 else { return error(.invalid, unexpected) }
    guard name == export.name else { return error(.unknown, "export '\(name)' not present") }
    let listsAll = !isSet && queries.isEmpty
    let base =
      listsAll
      || queries.contains { $0 == NBDProtocol.baseAllocation || (!isSet && $0 == "base:") }
    let depth =
      export.allocationDepth
      && (listsAll
        || queries.contains { $0 == NBDProtocol.allocationDepth || (!isSet && $0 == "qemu:") })
    let allBitmaps =
      listsAll
      || (!isSet && queries.contains { $0 == "qemu:" || $0 == NBDProtocol.dirtyBitmapPrefix })
    let bitmaps = export.bitmaps.indices.filter { index in
      allBitmaps
        || queries.contains { query in
          query.hasPrefix(NBDProtocol.dirtyBitmapPrefix)
            && export.bitmaps.firstIndex(
              of: String(query.dropFirst(NBDProtocol.dirtyBitmapPrefix.count)))
              == index
        }
    }
    if isSet {
      baseAllocation = base
      allocationDepth = depth
      selectedBitmaps = bitmaps
    }
    var contexts: [(id: UInt32, name: String)] = []
    if base { contexts.append((NBDProtocol.baseAllocationID, NBDProtocol.baseAllocation)) }
    if depth { contexts.append((NBDProtocol.allocationDepthID, NBDProtocol.allocationDepth)) }
    for index in bitmaps {
      contexts.append(
        (
          NBDProtocol.firstDirtyBitmapID + UInt32(index),
          NBDProtocol.dirtyBitmapPrefix + export.bitmaps[index]
        ))
    }
    for (id, contextName) in contexts {
      var context = ByteBuffer()
      context.writeInteger(isSet ? id : 0)
      context.writeString(contextName)
      NBDEncoding.optionReply(&out, option: option, type: .metaContext, payload: context)
    }
    NBDEncoding.optionReply(&out, option: option, type: .ack)
    return .reply(out)
  }
}
