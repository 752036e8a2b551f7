import NIOCore
import Testing

@testable import NBD

/// Byte layouts of the messages the server sends and of the requests it
/// reads, and the length and magic checks on them.
@Suite struct NBDCodecTests {
  @Test func greetingIsNewstyleWithFixedAndNoZeroes() {
    let bytes = Array(buffer: NBDEncoding.greeting())
    #expect(bytes == Array("NBDMAGIC".utf8) + Array("IHAVEOPT".utf8) + [0, 3])
  }

  @Test func requestHeaderRoundTrips() {
    let request = NBDRequest(
      flags: [.fua, .noHole], type: NBDCommand.writeZeroes.rawValue, cookie: 0x0102_0304_0506_0708,
      offset: 0x1000, length: 512)
    var buffer = ByteBuffer()
    request.encode(into: &buffer)
    #expect(
      Array(buffer: buffer) == [
        0x25, 0x60, 0x95, 0x13, 0, 3, 0, 6, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0,
        2, 0,
      ])
    #expect(NBDRequest.decode(&buffer) == request)
  }

  @Test func shortHeadersDecodeToNil() {
    var request = ByteBuffer(bytes: [UInt8](repeating: 0, count: 27))
    #expect(NBDRequest.decode(&request) == nil)
    var option = ByteBuffer(bytes: [UInt8](repeating: 0, count: 15))
    #expect(NBDOptionHeader.decode(&option) == nil)
  }

  @Test func simpleReplyLayout() {
    var buffer = ByteBuffer()
    NBDEncoding.simpleReply(&buffer, error: 22, cookie: 7)
    #expect(
      Array(buffer: buffer) == [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 7])
  }

  @Test func structuredChunkLayouts() {
    var hole = ByteBuffer()
    NBDEncoding.hole(&hole, done: true, cookie: 9, offset: 512, length: 4096)
    #expect(
      Array(buffer: hole) == [
        0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 12,
        0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0x10, 0,
      ])
    var error = ByteBuffer()
    NBDEncoding.errorChunk(&error, cookie: 1, error: 22, message: "no")
    #expect(
      Array(buffer: error) == [
        0x66, 0x8e, 0x33, 0xef, 0, 1, 0x80, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 8,
        0, 0, 0, 22, 0, 2, 0x6e, 0x6f,
      ])
    var status = ByteBuffer()
    NBDEncoding.blockStatus(
      &status, done: false, cookie: 2, contextID: 0, extents: [(1024, 3), (512, 0)])
    #expect(
      Array(buffer: status) == [
        0x66, 0x8e, 0x33, 0xef, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 20,
        0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 3, 0, 0, 2, 0, 0, 0, 0, 0,
      ])
  }

  @Test func optionHeaderChecksMagicAndLength() {
    func header(magic: UInt64, length: UInt32) -> NBDOptionHeader {
      var buffer = ByteBuffer()
      buffer.writeInteger(magic)
      buffer.writeInteger(UInt32(7))
      buffer.writeInteger(length)
      return NBDOptionHeader.decode(&buffer)!
    }
    #expect(header(magic: NBDProtocol.optionMagic, length: 32 << 20).fatalProblem == nil)
    #expect(header(magic: 0x1234, length: 0).fatalProblem == "Bad magic received")
    #expect(
      header(magic: NBDProtocol.optionMagic, length: (32 << 20) + 1).fatalProblem
        == "len (33554433 ) is larger than max len (33554432)")
  }
}

extension Array where Element == UInt8 {
  init(buffer: ByteBuffer) {
    self = buffer.getBytes(at: buffer.readerIndex, length: buffer.readableBytes) ?? []
  }
}
