import NIOCore
import Testing

@testable import NBD

/// Byte layouts of the extended headers (32-byte requests and chunks with
/// 64-bit lengths), BLOCK_STATUS_EXT and BLOCK_STATUS payloads, each checked
/// against the spec's layout and decoded back.
@Suite struct NBDExtendedCodecTests {
  @Test func extendedRequestHeaderRoundTrips() {
    let request = NBDRequest(
      magic: NBDProtocol.extendedRequestMagic, flags: [.fua, .payloadLength],
      type: NBDCommand.write.rawValue, cookie: 0x0102_0304_0506_0708,
      offset: 0x1_0000_0000, length: 0x2_0000_0001)
    var buffer = ByteBuffer()
    request.encode(into: &buffer, extended: true)
    #expect(
      Array(buffer: buffer) == [
        0x21, 0xe4, 0x1c, 0x71, 0, 0x21, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8,
        0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1,
      ])
    #expect(buffer.readableBytes == NBDRequest.extendedSize)
    #expect(NBDRequest.decode(&buffer, extended: true) == request)
    var short = ByteBuffer(bytes: [UInt8](repeating: 0, count: 31))
    #expect(NBDRequest.decode(&short, extended: true) == nil)
  }

  @Test func compactDecodeReadsOnly28Bytes() {
    // The same 32 bytes read as a compact header: the length is the 32-bit
    // field at byte 24, and 4 bytes stay unread.
    var buffer = ByteBuffer(bytes: [UInt8](repeating: 0, count: 24) + [0, 0, 2, 0, 9, 9, 9, 9])
    let request = NBDRequest.decode(&buffer)
    #expect(request?.length == 512)
    #expect(buffer.readableBytes == 4)
  }

  @Test func extendedChunkHeadersEchoTheRequestOffset() {
    var none = ByteBuffer()
    NBDEncoding.chunkHeader(
      &none, done: true, type: .none, cookie: 7, length: 0, requestOffset: 0x1_0000_0200)
    #expect(
      Array(buffer: none) == [
        0x6e, 0x8a, 0x27, 0x8c, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7,
        0, 0, 0, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0,
      ])
    var hole = ByteBuffer()
    NBDEncoding.hole(
      &hole, done: false, cookie: 9, offset: 4096, length: 512, requestOffset: 1024)
    #expect(
      Array(buffer: hole) == [
        0x6e, 0x8a, 0x27, 0x8c, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9,
        0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 12,
        0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 2, 0,
      ])
    var error = ByteBuffer()
    NBDEncoding.errorChunk(&error, cookie: 1, error: 22, message: "no", requestOffset: 0)
    #expect(
      Array(buffer: error) == [
        0x6e, 0x8a, 0x27, 0x8c, 0, 1, 0x80, 1, 0, 0, 0, 0, 0, 0, 0, 1,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8,
        0, 0, 0, 22, 0, 2, 0x6e, 0x6f,
      ])
    // Every chunk decodes back through the client's reader.
    for (chunk, type, length) in [(none, 0, 0), (hole, 2, 12), (error, 0x8001, 8)] {
      var bytes = chunk
      let magic = bytes.readInteger(as: UInt32.self)!
      #expect(NBDReplyHeader.remainder(after: magic) == 28)
      let header = NBDReplyHeader.decode(magic: magic, &bytes)
      guard case .extended(_, let decodedType, _, let offset, let decodedLength) = header else {
        Issue.record("not an extended chunk: \(String(describing: header))")
        continue
      }
      #expect(decodedType == UInt16(type))
      #expect(decodedLength == UInt64(length))
      #expect(offset == (type == 0 ? 0x1_0000_0200 : type == 2 ? 1024 : 0))
      #expect(bytes.readableBytes == length)
    }
  }

  @Test func blockStatusExtendedLayout() {
    var buffer = ByteBuffer()
    NBDEncoding.blockStatusExtended(
      &buffer, done: true, cookie: 3, requestOffset: 0, contextID: 2,
      extents: [(0x1_8000_0000, 3), (512, 0)])
    #expect(
      Array(buffer: buffer) == [
        0x6e, 0x8a, 0x27, 0x8c, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 3,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 40,
        0, 0, 0, 2, 0, 0, 0, 2,
        0, 0, 0, 1, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3,
        0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0,
      ])
  }

  @Test func compactChunksCanCarryTheExtendedHeader() {
    // BLOCK_STATUS (type 5) is also allowed under extended headers.
    var buffer = ByteBuffer()
    NBDEncoding.blockStatus(
      &buffer, done: true, cookie: 2, contextID: 0, extents: [(1024, 3)], requestOffset: 512)
    #expect(buffer.readableBytes == 32 + 12)
    #expect(buffer.getInteger(at: 0, as: UInt32.self) == NBDProtocol.extendedReplyMagic)
    #expect(buffer.getInteger(at: 16, as: UInt64.self) == 512)
    #expect(buffer.getInteger(at: 24, as: UInt64.self) == 12)
  }

  @Test func blockStatusPayloadParsing() {
    func payload(_ length: UInt64, _ ids: [UInt32]) -> ByteBuffer {
      var buffer = ByteBuffer()
      buffer.writeInteger(length)
      for id in ids { buffer.writeInteger(id) }
      return buffer
    }
    let negotiated: Set<UInt32> = [0, 1, 2]
    #expect(
      NBDBlockStatusPayload.parse(payload(1 << 33, [2, 0]), negotiated: negotiated)
        == NBDBlockStatusPayload(effectLength: 1 << 33, contextIDs: [0, 2]))
    // No id, an id not negotiated, one twice, more ids than negotiated, a
    // length not made of whole ids: all invalid.
    #expect(NBDBlockStatusPayload.parse(payload(512, []), negotiated: negotiated) == nil)
    #expect(NBDBlockStatusPayload.parse(payload(512, [7]), negotiated: negotiated) == nil)
    #expect(NBDBlockStatusPayload.parse(payload(512, [1, 1]), negotiated: negotiated) == nil)
    #expect(
      NBDBlockStatusPayload.parse(payload(512, [0, 1, 2, 0]), negotiated: negotiated) == nil)
    var ragged = payload(512, [0])
    ragged.writeInteger(UInt16(1))
    #expect(NBDBlockStatusPayload.parse(ragged, negotiated: negotiated) == nil)
    var encoded = ByteBuffer()
    NBDBlockStatusPayload(effectLength: 4096, contextIDs: [2, 0]).encode(into: &encoded)
    #expect(Array(buffer: encoded) == Array(buffer: payload(4096, [0, 2])))
  }

  @Test func newNumbersMatchTheSpec() {
    #expect(NBDOption.extendedHeaders.rawValue == 11)
    #expect(NBDOption.name(of: 11) == "extended headers")
    #expect(NBDReplyType.extendedHeaderRequired.rawValue == 0x8000_000a)
    #expect(NBDCommandFlags.payloadLength.rawValue == 0x20)
    #expect(NBDTransmissionFlags.blockStatusPayload.rawValue == 0x1000)
    #expect(NBDChunkType.blockStatusExtended.rawValue == 6)
  }
}
