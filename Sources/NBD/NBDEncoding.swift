import NIOCore

/// Encoders for every message the server sends, each appending one complete
/// message to a `ByteBuffer` (big-endian, as the protocol wants).
public enum NBDEncoding {
  /// The newstyle greeting: NBDMAGIC, IHAVEOPT, the handshake flags.
  public static func greeting() -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.writeInteger(NBDProtocol.greetingMagic)
    buffer.writeInteger(NBDProtocol.optionMagic)
    buffer.writeInteger(NBDProtocol.handshakeFlags)
    return buffer
  }

  /// An option reply with its payload.
  public static func optionReply(
    _ buffer: inout ByteBuffer, option: UInt32, type: NBDReplyType,
    payload: ByteBuffer = ByteBuffer()
  ) {
    buffer.writeInteger(NBDProtocol.optionReplyMagic)
    buffer.writeInteger(option)
    buffer.writeInteger(type.rawValue)
    buffer.writeInteger(UInt32(payload.readableBytes))
    var payload = payload
    buffer.writeBuffer(&payload)
  }

  /// An error option reply carrying `message` (qemu-nbd always sends one).
  public static func optionError(
    _ buffer: inout ByteBuffer, option: UInt32, type: NBDReplyType, message: String
  ) {
    optionReply(&buffer, option: option, type: type, payload: ByteBuffer(string: message))
  }

  /// An `NBD_REP_INFO` reply: the info type, then its body.
  public static func info(
    _ buffer: inout ByteBuffer, option: UInt32, type: NBDInfoType, body: ByteBuffer
  ) {
    var payload = ByteBuffer()
    payload.writeInteger(type.rawValue)
    var body = body
    payload.writeBuffer(&body)
    optionReply(&buffer, option: option, type: .info, payload: payload)
  }

  /// A simple reply header (READ data, if any, follows it).
  public static func simpleReply(_ buffer: inout ByteBuffer, error: UInt32, cookie: UInt64) {
    buffer.writeInteger(NBDProtocol.simpleReplyMagic)
    buffer.writeInteger(error)
    buffer.writeInteger(cookie)
  }

  /// A chunk header for a payload of `length` bytes: the 20-byte structured
  /// header, or with `requestOffset` (the offset of the request answered,
  /// once extended headers are negotiated) the 32-byte extended header.
  public static func chunkHeader(
    _ buffer: inout ByteBuffer, done: Bool, type: NBDChunkType, cookie: UInt64, length: Int,
    requestOffset: UInt64? = nil
  ) {
    let flags = UInt16(done ? 1 : 0)
    if let requestOffset {
      buffer.writeInteger(NBDProtocol.extendedReplyMagic)
      buffer.writeInteger(flags)
      buffer.writeInteger(type.rawValue)
      buffer.writeInteger(cookie)
      buffer.writeInteger(requestOffset)
      buffer.writeInteger(UInt64(length))
    } else {
      buffer.writeInteger(NBDProtocol.structuredReplyMagic)
      buffer.writeInteger(flags)
      buffer.writeInteger(type.rawValue)
      buffer.writeInteger(cookie)
      buffer.writeInteger(UInt32(length))
    }
  }

  /// An OFFSET_HOLE chunk (extended with `requestOffset`).
  public static func hole(
    _ buffer: inout ByteBuffer, done: Bool, cookie: UInt64, offset: UInt64, length: UInt32,
    requestOffset: UInt64? = nil
  ) {
    chunkHeader(
      &buffer, done: done, type: .offsetHole, cookie: cookie, length: 12,
      requestOffset: requestOffset)
    buffer.writeInteger(offset)
    buffer.writeInteger(length)
  }

  /// An ERROR chunk (always the last of its request; extended with
  /// `requestOffset`).
  public static func errorChunk(
    _ buffer: inout ByteBuffer, cookie: UInt64, error: UInt32, message: String,
    requestOffset: UInt64? = nil
  ) {
    let text = Array(message.utf8.prefix(Int(UInt16.max)))
    chunkHeader(
      &buffer, done: true, type: .error, cookie: cookie, length: 6 + text.count,
      requestOffset: requestOffset)
    buffer.writeInteger(error)
    buffer.writeInteger(UInt16(text.count))
    buffer.writeBytes(text)
  }

  /// A BLOCK_STATUS chunk for one context (extended header with
  /// `requestOffset`; the descriptors stay 32-bit).
  public static func blockStatus(
    _ buffer: inout ByteBuffer, done: Bool, cookie: UInt64, contextID: UInt32,
    extents: [(length: UInt32, flags: UInt32)], requestOffset: UInt64? = nil
  ) {
    chunkHeader(
      &buffer, done: done, type: .blockStatus, cookie: cookie, length: 4 + 8 * extents.count,
      requestOffset: requestOffset)
    buffer.writeInteger(contextID)
    for extent in extents {
      buffer.writeInteger(extent.length)
      buffer.writeInteger(extent.flags)
    }
  }

  /// A BLOCK_STATUS_EXT chunk (extended headers only): the context id, the
  /// descriptor count, then 64-bit lengths and flags.
  public static func blockStatusExtended(
    _ buffer: inout ByteBuffer, done: Bool, cookie: UInt64, requestOffset: UInt64,
    contextID: UInt32, extents: [(length: UInt64, flags: UInt64)]
  ) {
    chunkHeader(
      &buffer, done: done, type: .blockStatusExtended, cookie: cookie,
      length: 8 + 16 * extents.count, requestOffset: requestOffset)
    buffer.writeInteger(contextID)
    buffer.writeInteger(UInt32(extents.count))
    for extent in extents {
      buffer.writeInteger(extent.length)
      buffer.writeInteger(extent.flags)
    }
  }
}
