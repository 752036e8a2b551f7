import NIOCore
import Testing

@testable import NBD

/// NBD_OPT_EXTENDED_HEADERS in the server's option state machine (the
/// orders QEMU 8.2+ answers), and the request checks once it is on.
@Suite struct NBDExtendedNegotiatorTests {
  typealias Reply = NBDNegotiatorTests.Reply

  static let extendedHeaders: UInt32 = 11
  static let structuredReply: UInt32 = 8

  /// The replies of one option (nil: the client is dropped).
  static func answer(
    _ negotiator: inout NBDNegotiator, _ option: UInt32, _ payload: ByteBuffer = ByteBuffer()
  ) -> [Reply]? {
    switch negotiator.handle(option: option, payload: payload) {
    case .reply(let bytes), .replyAndClose(let bytes), .transmission(let bytes):
      NBDNegotiatorTests.replies(bytes)
    case .disconnect, .startTLS: nil
    }
  }

  static func error(_ option: UInt32, _ type: NBDReplyType, _ text: String) -> [Reply] {
    [Reply(option: option, type: type.rawValue, payload: Array(text.utf8))]
  }

  static func ack(_ option: UInt32) -> [Reply] {
    [Reply(option: option, type: NBDReplyType.ack.rawValue, payload: [])]
  }

  @Test func extendedHeadersAloneImplyStructuredReplies() {
    var negotiator = NBDNegotiatorTests.negotiator()
    #expect(negotiator.mode == .simple)
    #expect(Self.answer(&negotiator, Self.extendedHeaders) == Self.ack(Self.extendedHeaders))
    #expect(negotiator.mode == .extended)
    #expect(negotiator.structuredReplies)
    // A second request is refused, and so is a downgrade.
    #expect(
      Self.answer(&negotiator, Self.extendedHeaders)
        == Self.error(Self.extendedHeaders, .invalid, "extended headers already negotiated"))
    #expect(
      Self.answer(&negotiator, Self.structuredReply)
        == Self.error(
          Self.structuredReply, .extendedHeaderRequired, "extended headers already negotiated"))
    #expect(negotiator.mode == .extended)
  }

  @Test func structuredRepliesThenExtendedHeadersUpgrades() {
    var negotiator = NBDNegotiatorTests.negotiator()
    #expect(Self.answer(&negotiator, Self.structuredReply) == Self.ack(Self.structuredReply))
    #expect(negotiator.mode == .structured)
    #expect(Self.answer(&negotiator, Self.extendedHeaders) == Self.ack(Self.extendedHeaders))
    #expect(negotiator.mode == .extended)
  }

  @Test func aPayloadIsInvalidAndChangesNothing() {
    var negotiator = NBDNegotiatorTests.negotiator()
    #expect(
      Self.answer(&negotiator, Self.extendedHeaders, ByteBuffer(bytes: [0]))
        == Self.error(
          Self.extendedHeaders, .invalid, "option 'extended headers' has unexpected length"))
    #expect(negotiator.mode == .simple)
  }

  @Test func switchedOffTheOptionIsUnsupportedAsInQEMU72() {
    var negotiator = NBDNegotiator(
      export: NBDExportInfo(size: 1 << 20), offersExtendedHeaders: false)
    #expect(negotiator.receiveClientFlags(3) == nil)
    #expect(
      Self.answer(&negotiator, Self.extendedHeaders)
        == Self.error(
          Self.extendedHeaders, .unsupported, "Unsupported option 11 (<unknown>)"))
    #expect(negotiator.mode == .simple)
  }

  @Test func exportNameAfterExtendedHeadersDropsTheClient() {
    var negotiator = NBDNegotiatorTests.negotiator()
    _ = Self.answer(&negotiator, Self.extendedHeaders)
    guard case .disconnect(let reason) = negotiator.handle(option: 1, payload: ByteBuffer())
    else {
      Issue.record("EXPORT_NAME entered transmission after extended headers")
      return
    }
    #expect(reason == "Extended headers already negotiated")
  }

  @Test func metaContextsAndGoWithExtendedHeaders() throws {
    var negotiator = NBDNegotiatorTests.negotiator()
    _ = Self.answer(&negotiator, Self.extendedHeaders)
    // SET_META_CONTEXT needs no STRUCTURED_REPLY once extended headers are on.
    let set = Self.answer(
      &negotiator, 10,
      NBDNegotiatorTests.metaPayload(name: "", queries: [NBDProtocol.baseAllocation]))
    #expect(set?.count == 2)
    #expect(set?.first?.type == NBDReplyType.metaContext.rawValue)
    #expect(negotiator.baseAllocation)
    let go = try #require(
      Self.answer(&negotiator, 7, NBDNegotiatorTests.infoPayload(name: "", requests: [])))
    let export = try #require(go.first { $0.payload.first == 0 && $0.payload.count == 12 })
    let flags = NBDTransmissionFlags(
      rawValue: UInt16(export.payload[10]) << 8 | UInt16(export.payload[11]))
    #expect(flags.contains(.sendDF))
    #expect(flags.contains(.blockStatusPayload))
    // Without extended headers the flag is never sent (qemu-nbd 7.2's flags).
    #expect(
      !NBDExportInfo(size: 512).transmissionFlags(mode: .structured).contains(.blockStatusPayload))
  }

  // MARK: Requests

  func check(
    _ type: NBDCommand, flags: NBDCommandFlags = [], offset: UInt64 = 0, length: UInt64 = 512,
    magic: UInt32 = NBDProtocol.extendedRequestMagic, size: UInt64 = 16 << 30,
    readOnly: Bool = false, payloadConsumed: Bool = false
  ) -> NBDRequestValidation {
    NBDRequestValidation.check(
      NBDRequest(
        magic: magic, flags: flags, type: type.rawValue, cookie: 1, offset: offset, length: length),
      exportSize: size, readOnly: readOnly, mode: .extended, payloadConsumed: payloadConsumed)
  }

  @Test func compactHeaderAfterExtendedNegotiationIsFatal() {
    #expect(
      check(.read, magic: NBDProtocol.requestMagic)
        == .reject(
          error: .invalid, message: "invalid magic (got 0x25609513, expected 0x21e41c71)",
          payloadFollows: false, fatal: true))
    // And the other way round: an extended header without negotiation.
    #expect(
      NBDRequestValidation.check(
        NBDRequest(
          magic: NBDProtocol.extendedRequestMagic, type: 0, cookie: 1, offset: 0, length: 512),
        exportSize: 4096, readOnly: false, mode: .structured)
        == .reject(
          error: .invalid, message: "invalid magic (got 0x21e41c71)", payloadFollows: false,
          fatal: true))
  }

  @Test func effectLengthsPast4GiB() {
    let sixGiB: UInt64 = 6 << 30
    #expect(check(.writeZeroes, flags: .noHole, length: sixGiB) == .valid(.writeZeroes))
    #expect(check(.trim, length: sixGiB) == .valid(.trim))
    #expect(check(.blockStatus, length: sixGiB) == .valid(.blockStatus))
    #expect(
      check(.trim, offset: 12 << 30, length: sixGiB)
        == .reject(
          error: .invalid,
          message: "operation past EOF; From: 12884901888, Len: 6442450944, Size: 17179869184",
          payloadFollows: false, fatal: false))
    // An offset + length that wraps around 2^64 is past EOF, not valid.
    #expect(
      check(.writeZeroes, offset: 4096, length: UInt64.max - 100)
        == .reject(
          error: .invalid,
          message:
            "operation past EOF; From: 4096, Len: \(UInt64.max - 100), Size: 17179869184",
          payloadFollows: false, fatal: false))
  }

  @Test func payloadLimitsStillApply() {
    // READ and CACHE stay at 32 MiB (no payload follows: the client lives).
    #expect(
      check(.read, length: 1 << 32)
        == .reject(
          error: .invalid, message: "len (4294967296) is larger than max len (33554432)",
          payloadFollows: false, fatal: false))
    #expect(
      check(.cache, length: (32 << 20) + 1)
        == .reject(
          error: .invalid, message: "len (33554433) is larger than max len (33554432)",
          payloadFollows: false, fatal: false))
    // A payload over 32 MiB cannot be skipped: the client is dropped.
    #expect(
      check(.write, flags: .payloadLength, length: (32 << 20) + 1)
        == .reject(
          error: .invalid, message: "len (33554433) is larger than max len (33554432)",
          payloadFollows: false, fatal: true))
    #expect(
      check(.blockStatus, flags: .payloadLength, length: 1 << 40)
        == .reject(
          error: .invalid, message: "len (1099511627776) is larger than max len (33554432)",
          payloadFollows: false, fatal: true))
  }

  @Test func payloadLengthFlagPerCommand() {
    #expect(check(.write, flags: .payloadLength) == .valid(.write))
    // QEMU tolerates a WRITE without the flag (its payload is known anyway).
    #expect(check(.write) == .valid(.write))
    #expect(check(.blockStatus, flags: .payloadLength, length: 12) == .readBlockStatusPayload)
    #expect(
      check(.blockStatus, flags: [.payloadLength, .reqOne], length: 1 << 33, payloadConsumed: true)
        == .valid(.blockStatus))
    // On a command without a payload form, the payload is read and thrown
    // away, and the command fails on its flags (its length counts as 0).
    #expect(
      check(.trim, flags: .payloadLength, offset: 16 << 30, length: 4096)
        == .reject(
          error: .invalid, message: "unsupported flags for command trim (got 0x20)",
          payloadFollows: true, fatal: false))
    // Without extended headers the flag is simply unknown.
    #expect(
      NBDRequestValidation.check(
        NBDRequest(
          flags: .payloadLength, type: NBDCommand.write.rawValue, cookie: 1, offset: 0, length: 512),
        exportSize: 4096, readOnly: false, mode: .structured)
        == .reject(
          error: .invalid, message: "unsupported flags for command write (got 0x20)",
          payloadFollows: true, fatal: false))
  }
}
