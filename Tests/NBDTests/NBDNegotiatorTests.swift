import NIOCore
import Testing

@testable import NBD

/// The option phase as qemu-nbd 7.2 answers it (replies parsed back from the
/// bytes the negotiator produces).
@Suite struct NBDNegotiatorTests {
  /// One option reply: option, type, payload.
  struct Reply: Equatable {
    var option: UInt32
    var type: UInt32
    var payload: [UInt8]
  }

  static func replies(_ buffer: ByteBuffer) -> [Reply] {
    var buffer = buffer
    var result: [Reply] = []
    while buffer.readableBytes > 0 {
      #expect(buffer.readInteger(as: UInt64.self) == NBDProtocol.optionReplyMagic)
      let option = buffer.readInteger(as: UInt32.self)!
      let type = buffer.readInteger(as: UInt32.self)!
      let length = buffer.readInteger(as: UInt32.self)!
      result.append(
        Reply(option: option, type: type, payload: buffer.readBytes(length: Int(length))!))
    }
    return result
  }

  static func negotiator(_ export: NBDExportInfo = NBDExportInfo(size: 1 << 20)) -> NBDNegotiator {
    var negotiator = NBDNegotiator(export: export)
    #expect(negotiator.receiveClientFlags(3) == nil)
    return negotiator
  }

  static func infoPayload(name: String, requests: [UInt16]) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.writeInteger(UInt32(name.utf8.count))
    buffer.writeString(name)
    buffer.writeInteger(UInt16(requests.count))
    for request in requests { buffer.writeInteger(request) }
    return buffer
  }

  static func metaPayload(name: String, queries: [String]) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.writeInteger(UInt32(name.utf8.count))
    buffer.writeString(name)
    buffer.writeInteger(UInt32(queries.count))
    for query in queries {
      buffer.writeInteger(UInt32(query.utf8.count))
      buffer.writeString(query)
    }
    return buffer
  }

  func replyBytes(_ outcome: NBDNegotiator.Outcome) -> ByteBuffer? {
    switch outcome {
    case .reply(let bytes), .replyAndClose(let bytes), .transmission(let bytes),
      .startTLS(let bytes):
      bytes
    case .disconnect: nil
    }
  }

  @Test func unknownClientFlagsDropTheClient() {
    var negotiator = NBDNegotiator(export: NBDExportInfo(size: 512))
    #expect(negotiator.receiveClientFlags(0x7) == "Unknown client flags 0x4 received")
  }

  @Test func goSendsBlockSizeThenExportThenAck() throws {
    var negotiator = Self.negotiator(
      NBDExportInfo(description: "d", size: 1 << 20, requestAlignment: 512))
    guard case .reply = negotiator.handle(option: 8, payload: ByteBuffer()) else {
      Issue.record("structured reply refused")
      return
    }
    let outcome = negotiator.handle(
      option: 7, payload: Self.infoPayload(name: "", requests: [1, 3]))
    guard case .transmission(let bytes) = outcome else {
      Issue.record("GO did not start transmission")
      return
    }
    let replies = Self.replies(bytes)
    #expect(replies.map { $0.type } == [3, 3, 3, 3, 1])
    #expect(replies[0].payload == [0, 1])
    #expect(replies[1].payload == [0, 2] + Array("d".utf8))
    #expect(replies[2].payload == [0, 3, 0, 0, 2, 0, 0, 0, 0x10, 0, 2, 0, 0, 0])
    // Writable, structured, -e 1: qemu-nbd's 0xced.
    #expect(replies[3].payload == [0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0x0c, 0xed])
  }

  @Test func goWithoutSizeRequestHasMinimumOne() {
    var negotiator = Self.negotiator(NBDExportInfo(size: 4096, requestAlignment: 512))
    let bytes = replyBytes(
      negotiator.handle(option: 7, payload: Self.infoPayload(name: "", requests: [])))!
    let replies = Self.replies(bytes)
    #expect(replies[0].payload.prefix(6) == [0, 3, 0, 0, 0, 1])
    // No structured replies: no DF (0x0c6d).
    #expect(replies[1].payload.suffix(2) == [0x0c, 0x6d])
  }

  /// As qemu-nbd 7.2 (nbd_negotiate_handle_info): the block sizes and the
  /// export's size and flags first, then the error in place of ACK.
  @Test func infoWithoutSizeRequestNeedsItWhenAligned() {
    var negotiator = Self.negotiator(NBDExportInfo(size: 4096, requestAlignment: 512))
    let bytes = replyBytes(
      negotiator.handle(option: 6, payload: Self.infoPayload(name: "", requests: [])))!
    let replies = Self.replies(bytes)
    #expect(replies.map(\.type) == [3, 3, 0x8000_0008])
    // NBD_INFO_BLOCK_SIZE with the alignment as minimum (INFO counts as
    // asking), then NBD_INFO_EXPORT with the size.
    #expect(replies.first?.payload.prefix(6) == [0, 3, 0, 0, 2, 0])
    #expect(replies.dropFirst().first?.payload.prefix(10) == [0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0])
    #expect(
      replies.last
        == Reply(
          option: 6, type: 0x8000_0008,
          payload: Array("request NBD_INFO_BLOCK_SIZE to use this export".utf8)))
  }

  @Test func unknownExportAndUnknownOption() {
    var negotiator = Self.negotiator()
    let bytes = replyBytes(
      negotiator.handle(option: 6, payload: Self.infoPayload(name: "x", requests: [])))!
    #expect(
      Self.replies(bytes) == [
        Reply(option: 6, type: 0x8000_0006, payload: Array("export 'x' not present".utf8))
      ])
    let unsupported = replyBytes(negotiator.handle(option: 4, payload: ByteBuffer()))!
    #expect(
      Self.replies(unsupported) == [
        Reply(
          option: 4, type: 0x8000_0001, payload: Array("Unsupported option 4 (peek export)".utf8))
      ])
    let tls = replyBytes(negotiator.handle(option: 5, payload: ByteBuffer()))!
    #expect(
      Self.replies(tls) == [
        Reply(option: 5, type: 0x8000_0002, payload: Array("TLS not configured".utf8))
      ])
  }

  @Test func oversizedAndTruncatedNamesAreInvalid() {
    var negotiator = Self.negotiator()
    let long = String(repeating: "a", count: 4097)
    let bytes = replyBytes(
      negotiator.handle(option: 7, payload: Self.infoPayload(name: long, requests: [])))!
    #expect(
      Self.replies(bytes) == [
        Reply(option: 7, type: 0x8000_0003, payload: Array("Invalid name length: 4097".utf8))
      ])
    var truncated = ByteBuffer()
    truncated.writeInteger(UInt32(10))
    let short = replyBytes(negotiator.handle(option: 7, payload: truncated))!
    #expect(Self.replies(short).map(\.type) == [0x8000_0003])
    guard case .disconnect = negotiator.handle(option: 1, payload: ByteBuffer(string: long)) else {
      Issue.record("a long EXPORT_NAME did not drop the client")
      return
    }
  }

  @Test func listSendsOneServerWithDescription() {
    var negotiator = Self.negotiator(NBDExportInfo(name: "e", description: "text", size: 512))
    let bytes = replyBytes(negotiator.handle(option: 3, payload: ByteBuffer()))!
    #expect(
      Self.replies(bytes) == [
        Reply(option: 3, type: 2, payload: [0, 0, 0, 1] + Array("etext".utf8)),
        Reply(option: 3, type: 1, payload: []),
      ])
    let withData = replyBytes(negotiator.handle(option: 3, payload: ByteBuffer(bytes: [1])))!
    #expect(Self.replies(withData).map(\.type) == [0x8000_0003])
  }

  @Test func metaContextsNeedStructuredRepliesToSet() {
    var negotiator = Self.negotiator()
    let set = Self.metaPayload(name: "", queries: ["base:allocation"])
    let refused = replyBytes(negotiator.handle(option: 10, payload: set))!
    #expect(
      Self.replies(refused) == [
        Reply(
          option: 10, type: 0x8000_0003,
          payload: Array(
            "request option 'set meta context' when structured reply is not negotiated".utf8))
      ])
    let listed = replyBytes(
      negotiator.handle(option: 9, payload: Self.metaPayload(name: "", queries: [])))!
    let context = [0, 0, 0, 0] + Array("base:allocation".utf8)
    #expect(
      Self.replies(listed) == [
        Reply(option: 9, type: 4, payload: context), Reply(option: 9, type: 1, payload: []),
      ])
    _ = negotiator.handle(option: 8, payload: ByteBuffer())
    let again = replyBytes(negotiator.handle(option: 8, payload: ByteBuffer()))!
    #expect(Self.replies(again).map(\.type) == [0x8000_0003])
    let selected = replyBytes(negotiator.handle(option: 10, payload: set))!
    #expect(
      Self.replies(selected) == [
        Reply(option: 10, type: 4, payload: context), Reply(option: 10, type: 1, payload: []),
      ])
    #expect(negotiator.baseAllocation)
    let other = replyBytes(
      negotiator.handle(option: 10, payload: Self.metaPayload(name: "", queries: ["qemu:x"])))!
    #expect(Self.replies(other) == [Reply(option: 10, type: 1, payload: [])])
    #expect(!negotiator.baseAllocation)
  }

  /// qemu-nbd's `qemu:` contexts: LIST answers with id 0, SET with the
  /// context's id (allocation depth 1, the bitmaps from 2 in export order);
  /// `qemu:` and `qemu:dirty-bitmap:` list all, select nothing.
  @Test func qemuContextsAndTheirIDs() {
    var negotiator = Self.negotiator(
      NBDExportInfo(size: 1 << 20, allocationDepth: true, bitmaps: ["b0", "b2"]))
    _ = negotiator.handle(option: 8, payload: ByteBuffer())
    func context(_ id: UInt32, _ name: String) -> [UInt8] {
      withUnsafeBytes(of: id.bigEndian) { Array($0) } + Array(name.utf8)
    }
    let listed = replyBytes(
      negotiator.handle(option: 9, payload: Self.metaPayload(name: "", queries: ["qemu:"])))!
    #expect(
      Self.replies(listed) == [
        Reply(option: 9, type: 4, payload: context(0, "qemu:allocation-depth")),
        Reply(option: 9, type: 4, payload: context(0, "qemu:dirty-bitmap:b0")),
        Reply(option: 9, type: 4, payload: context(0, "qemu:dirty-bitmap:b2")),
        Reply(option: 9, type: 1, payload: []),
      ])
    let prefix = replyBytes(
      negotiator.handle(
        option: 9, payload: Self.metaPayload(name: "", queries: ["qemu:dirty-bitmap:"])))!
    #expect(Self.replies(prefix).count == 3)
    let set = Self.metaPayload(
      name: "", queries: ["qemu:dirty-bitmap:b2", "qemu:allocation-depth", "qemu:dirty-bitmap:"])
    let selected = replyBytes(negotiator.handle(option: 10, payload: set))!
    #expect(
      Self.replies(selected) == [
        Reply(option: 10, type: 4, payload: context(1, "qemu:allocation-depth")),
        Reply(option: 10, type: 4, payload: context(3, "qemu:dirty-bitmap:b2")),
        Reply(option: 10, type: 1, payload: []),
      ])
    #expect(negotiator.allocationDepth && !negotiator.baseAllocation)
    #expect(negotiator.selectedBitmaps == [1])
  }

  @Test func exportNameRepliesWithSizeFlagsAndZeroes() {
    var plain = NBDNegotiator(export: NBDExportInfo(size: 1024, readOnly: true))
    #expect(plain.receiveClientFlags(1) == nil)
    guard case .transmission(let bytes) = plain.handle(option: 1, payload: ByteBuffer()) else {
      Issue.record("EXPORT_NAME refused")
      return
    }
    #expect(
      Array(buffer: bytes) == [0, 0, 0, 0, 0, 0, 4, 0, 0x04, 0x0f]
        + [UInt8](repeating: 0, count: 124))
  }

  @Test func abortAcksThenCloses() {
    var negotiator = Self.negotiator()
    guard case .replyAndClose(let bytes) = negotiator.handle(option: 2, payload: ByteBuffer())
    else {
      Issue.record("ABORT did not close")
      return
    }
    #expect(Self.replies(bytes) == [Reply(option: 2, type: 1, payload: [])])
  }

  @Test func requestValidationFollowsQEMU() {
    func check(
      _ type: NBDCommand, flags: NBDCommandFlags = [], offset: UInt64 = 0, length: UInt64 = 512,
      readOnly: Bool = false, magic: UInt32 = NBDProtocol.requestMagic
    ) -> NBDRequestValidation {
      NBDRequestValidation.check(
        NBDRequest(
          magic: magic, flags: flags, type: type.rawValue, cookie: 1, offset: offset, length: length
        ),
        exportSize: 4096, readOnly: readOnly, structuredReplies: true)
    }
    #expect(check(.read) == .valid(.read))
    #expect(check(.read, flags: .dontFragment) == .valid(.read))
    #expect(
      check(.read, offset: 4096)
        == .reject(
          error: .invalid, message: "operation past EOF; From: 4096, Len: 512, Size: 4096",
          payloadFollows: false, fatal: false))
    #expect(
      check(.write, length: (32 << 20) + 1)
        == .reject(
          error: .invalid, message: "len (33554433 ) is larger than max len (33554432)",
          payloadFollows: false, fatal: true))
    #expect(
      check(.write, readOnly: true)
        == .reject(
          error: .invalid, message: "Export is read-only", payloadFollows: true, fatal: false))
    #expect(
      check(.flush, flags: .reqOne)
        == .reject(
          error: .invalid, message: "unsupported flags for command flush (got 0x8)",
          payloadFollows: false, fatal: false))
    #expect(
      check(.read, magic: 1)
        == .reject(
          error: .invalid, message: "invalid magic (got 0x1)", payloadFollows: false, fatal: true))
    #expect(check(.disconnect) == .disconnect)
    let unknown = NBDRequestValidation.check(
      NBDRequest(type: 99, cookie: 1, offset: 0, length: 0), exportSize: 4096, readOnly: false,
      structuredReplies: true)
    #expect(
      unknown
        == .reject(
          error: .invalid, message: "invalid request type (99) received", payloadFollows: false,
          fatal: false))
  }
}

/// qemu-nbd 7.2's forced TLS (`--tls-creds`): nothing but STARTTLS and
/// ABORT before TLS, and the usual options once it runs.
@Suite struct NBDNegotiatorTLSTests {
  typealias Reply = NBDNegotiatorTests.Reply

  static func negotiator(flags: UInt32 = 3) -> NBDNegotiator {
    var negotiator = NBDNegotiator(export: NBDExportInfo(size: 1 << 20), requiresTLS: true)
    #expect(negotiator.receiveClientFlags(flags) == nil)
    return negotiator
  }

  @Test(arguments: [3, 6, 7, 8, 9, 10, 11, 42] as [UInt32])
  func optionsBeforeTLSGetTLSRequired(option: UInt32) {
    var negotiator = Self.negotiator()
    guard case .reply(let bytes) = negotiator.handle(option: option, payload: ByteBuffer())
    else {
      Issue.record("option \(option) before TLS was not answered")
      return
    }
    let message = "Option 0x\(String(option, radix: 16)) not permitted before TLS"
    #expect(
      NBDNegotiatorTests.replies(bytes) == [
        Reply(option: option, type: 0x8000_0005, payload: Array(message.utf8))
      ])
    #expect(!negotiator.tlsActive)
  }

  @Test func abortBeforeTLSGetsTLSRequiredAndCloses() {
    var negotiator = Self.negotiator()
    guard case .replyAndClose(let bytes) = negotiator.handle(option: 2, payload: ByteBuffer())
    else {
      Issue.record("ABORT before TLS did not close")
      return
    }
    #expect(NBDNegotiatorTests.replies(bytes).map(\.type) == [0x8000_0005])
  }

  @Test func exportNameBeforeTLSDropsTheClient() {
    var negotiator = Self.negotiator()
    guard case .disconnect(let reason) = negotiator.handle(option: 1, payload: ByteBuffer())
    else {
      Issue.record("EXPORT_NAME before TLS was answered")
      return
    }
    #expect(reason == "Option 0x1 not permitted before TLS")
  }

  @Test func notFixedNewstyleCannotStartTLS() {
    var negotiator = Self.negotiator(flags: 2)
    guard case .disconnect(let reason) = negotiator.handle(option: 5, payload: ByteBuffer())
    else {
      Issue.record("a client that is not fixed newstyle was answered")
      return
    }
    #expect(reason == "Unsupported option 0x5")
  }

  @Test func startTLSWithAPayloadDropsTheClient() {
    var negotiator = Self.negotiator()
    guard
      case .disconnect(let reason) = negotiator.handle(
        option: 5, payload: ByteBuffer(bytes: [0]))
    else {
      Issue.record("STARTTLS with a payload was accepted")
      return
    }
    #expect(reason == "option 'starttls' has unexpected length")
  }

  @Test func startTLSThenOptionsAsUsual() {
    var negotiator = Self.negotiator()
    guard case .startTLS(let bytes) = negotiator.handle(option: 5, payload: ByteBuffer()) else {
      Issue.record("STARTTLS did not start TLS")
      return
    }
    #expect(NBDNegotiatorTests.replies(bytes) == [Reply(option: 5, type: 1, payload: [])])
    negotiator.tlsStarted()
    #expect(negotiator.tlsActive)
    guard case .reply(let again) = negotiator.handle(option: 5, payload: ByteBuffer()) else {
      Issue.record("STARTTLS over TLS was not answered")
      return
    }
    #expect(
      NBDNegotiatorTests.replies(again) == [
        Reply(option: 5, type: 0x8000_0003, payload: Array("TLS already enabled".utf8))
      ])
    guard case .reply(let structured) = negotiator.handle(option: 8, payload: ByteBuffer())
    else {
      Issue.record("STRUCTURED_REPLY over TLS was not answered")
      return
    }
    #expect(NBDNegotiatorTests.replies(structured) == [Reply(option: 8, type: 1, payload: [])])
    guard case .transmission = negotiator.handle(option: 1, payload: ByteBuffer()) else {
      Issue.record("EXPORT_NAME over TLS did not start transmission")
      return
    }
  }
}
