import NIOCore

/// A transmission-phase request header: compact (28 bytes, 32-bit length)
/// or, once extended headers are negotiated, extended (32 bytes, 64-bit
/// length).
public struct NBDRequest: Sendable, Equatable {
  /// The compact header's length on the wire.
  public static let size = 28
  /// The extended header's length on the wire.
  public static let extendedSize = 32
  /// The magic sent (checked by the server after decoding).
  public var magic: UInt32
  /// The command flags.
  public var flags: NBDCommandFlags
  /// The raw command type (may name no known command).
  public var type: UInt16
  /// The client's cookie, echoed in the reply.
  public var cookie: UInt64
  /// The offset.
  public var offset: UInt64
  /// The length: of the payload for WRITE (and, with extended headers, for
  /// any request with ``NBDCommandFlags/payloadLength``), of the effect
  /// otherwise. At most `UInt32.max` in a compact header.
  public var length: UInt64

  /// Creates a request.
  public init(
    magic: UInt32 = NBDProtocol.requestMagic, flags: NBDCommandFlags = [], type: UInt16,
    cookie: UInt64, offset: UInt64, length: UInt64
  ) {
    self.magic = magic
    self.flags = flags
    self.type = type
    self.cookie = cookie
    self.offset = offset
    self.length = length
  }

  /// The header's length on the wire in either form.
  public static func size(extended: Bool) -> Int { extended ? extendedSize : size }

  /// Decodes a header from the first 28 (extended: 32) readable bytes of
  /// `buffer`, or nil when fewer are there. The magic is not checked here.
  public static func decode(_ buffer: inout ByteBuffer, extended: Bool = false) -> NBDRequest? {
    guard buffer.readableBytes >= size(extended: extended),
      let magic = buffer.readInteger(as: UInt32.self),
      let flags = buffer.readInteger(as: UInt16.self),
      let type = buffer.readInteger(as: UInt16.self),
      let cookie = buffer.readInteger(as: UInt64.self),
      let offset = buffer.readInteger(as: UInt64.self),
      let length = extended
        ? buffer.readInteger(as: UInt64.self)
        : buffer.readInteger(as: UInt32.self).map(UInt64.init)
    else { return nil }
    return NBDRequest(
      magic: magic, flags: NBDCommandFlags(rawValue: flags), type: type, cookie: cookie,
      offset: offset, length: length)
  }

  /// Encodes the header (a client's side; the tests use it), compact or
  /// extended. A compact header needs a length of at most `UInt32.max`.
  public func encode(into buffer: inout ByteBuffer, extended: Bool = false) {
    buffer.writeInteger(magic)
    buffer.writeInteger(flags.rawValue)
    buffer.writeInteger(type)
    buffer.writeInteger(cookie)
    buffer.writeInteger(offset)
    if extended {
      buffer.writeInteger(length)
    } else {
      precondition(length <= UInt64(UInt32.max), "a compact request's length is 32 bits")
      buffer.writeInteger(UInt32(length))
    }
  }
}

/// An option header from the client (16 bytes on the wire).
public struct NBDOptionHeader: Sendable, Equatable {
  /// The header's length on the wire.
  public static let size = 16
  /// The magic sent (must be IHAVEOPT).
  public var magic: UInt64
  /// The option number.
  public var option: UInt32
  /// The length of the payload that follows.
  public var length: UInt32

  /// Decodes a header from 16 readable bytes, or nil when fewer are there.
  public static func decode(_ buffer: inout ByteBuffer) -> NBDOptionHeader? {
    guard buffer.readableBytes >= size,
      let magic = buffer.readInteger(as: UInt64.self),
      let option = buffer.readInteger(as: UInt32.self),
      let length = buffer.readInteger(as: UInt32.self)
    else { return nil }
    return NBDOptionHeader(magic: magic, option: option, length: length)
  }

  /// Why the server must drop the connection after this header, or nil: a
  /// bad magic, or a payload longer than 32 MiB (qemu-nbd's messages).
  public var fatalProblem: String? {
    if magic != NBDProtocol.optionMagic { return "Bad magic received" }
    if length > NBDProtocol.maxBufferSize {
      // qemu-nbd 7.2's text has this stray space.
      return "len (\(length) ) is larger than max len (\(NBDProtocol.maxBufferSize))"
    }
    return nil
  }
}

extension NBDOptionHeader {
  /// Encodes the header followed by `payload` (a client's side).
  public static func encode(option: NBDOption, payload: ByteBuffer, into buffer: inout ByteBuffer) {
    buffer.writeInteger(NBDProtocol.optionMagic)
    buffer.writeInteger(option.rawValue)
    buffer.writeInteger(UInt32(payload.readableBytes))
    var payload = payload
    buffer.writeBuffer(&payload)
  }
}
