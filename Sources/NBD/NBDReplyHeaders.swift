import NIOCore

/// The header of an option reply as a client reads it (20 bytes on the wire;
/// the server writes it with ``NBDEncoding/optionReply(_:option:type:payload:)``).
public struct NBDOptionReplyHeader: Sendable, Equatable {
  /// The header's length on the wire.
  public static let size = 20
  /// The magic (must be ``NBDProtocol/optionReplyMagic``).
  public var magic: UInt64
  /// The option answered.
  public var option: UInt32
  /// The reply type (``NBDReplyType`` raw value; errors have bit 31 set).
  public var type: UInt32
  /// The length of the payload that follows.
  public var length: UInt32

  /// Whether the type is an error (bit 31).
  public var isError: Bool { type & 0x8000_0000 != 0 }

  /// Decodes a header from 20 readable bytes, or nil when fewer are there.
  public static func decode(_ buffer: inout ByteBuffer) -> NBDOptionReplyHeader? {
    guard buffer.readableBytes >= size,
      let magic = buffer.readInteger(as: UInt64.self),
      let option = buffer.readInteger(as: UInt32.self),
      let type = buffer.readInteger(as: UInt32.self),
      let length = buffer.readInteger(as: UInt32.self)
    else { return nil }
    return NBDOptionReplyHeader(magic: magic, option: option, type: type, length: length)
  }
}

/// The header of a transmission reply as a client reads it: a simple reply
/// (16 bytes), a structured chunk (20 bytes) or an extended chunk (32
/// bytes), told apart by the magic.
public enum NBDReplyHeader: Sendable, Equatable {
  /// A simple reply: an error (0: success) and the cookie; READ data follows.
  case simple(error: UInt32, cookie: UInt64)
  /// A structured chunk: flags (bit 0: DONE), type, cookie, payload length.
  case chunk(flags: UInt16, type: UInt16, cookie: UInt64, length: UInt32)
  /// An extended chunk: as a structured one, with the offset of the request
  /// answered and a 64-bit payload length.
  case extended(flags: UInt16, type: UInt16, cookie: UInt64, offset: UInt64, length: UInt64)

  /// Bytes that follow the 4-byte magic of a simple reply.
  public static let simpleRemainder = 12
  /// Bytes that follow the 4-byte magic of a structured chunk.
  public static let chunkRemainder = 16
  /// Bytes that follow the 4-byte magic of an extended chunk.
  public static let extendedRemainder = 28
  /// The chunk flag that ends a structured reply.
  public static let doneFlag: UInt16 = 1

  /// The cookie of the request answered.
  public var cookie: UInt64 {
    switch self {
    case .simple(_, let cookie), .chunk(_, _, let cookie, _), .extended(_, _, let cookie, _, _):
      cookie
    }
  }

  /// Decodes what follows `magic` (``remainder(after:)`` bytes).
  public static func decode(magic: UInt32, _ buffer: inout ByteBuffer) -> NBDReplyHeader? {
    switch magic {
    case NBDProtocol.simpleReplyMagic:
      guard let error = buffer.readInteger(as: UInt32.self),
        let cookie = buffer.readInteger(as: UInt64.self)
      else { return nil }
      return .simple(error: error, cookie: cookie)
    case NBDProtocol.structuredReplyMagic:
      guard let flags = buffer.readInteger(as: UInt16.self),
        let type = buffer.readInteger(as: UInt16.self),
        let cookie = buffer.readInteger(as: UInt64.self),
        let length = buffer.readInteger(as: UInt32.self)
      else { return nil }
      return .chunk(flags: flags, type: type, cookie: cookie, length: length)
    case NBDProtocol.extendedReplyMagic:
      guard let flags = buffer.readInteger(as: UInt16.self),
        let type = buffer.readInteger(as: UInt16.self),
        let cookie = buffer.readInteger(as: UInt64.self),
        let offset = buffer.readInteger(as: UInt64.self),
        let length = buffer.readInteger(as: UInt64.self)
      else { return nil }
      return .extended(flags: flags, type: type, cookie: cookie, offset: offset, length: length)
    default:
      return nil
    }
  }

  /// How many header bytes follow `magic`, or nil for an unknown magic.
  public static func remainder(after magic: UInt32) -> Int? {
    switch magic {
    case NBDProtocol.simpleReplyMagic: simpleRemainder
    case NBDProtocol.structuredReplyMagic: chunkRemainder
    case NBDProtocol.extendedReplyMagic: extendedRemainder
    default: nil
    }
  }
}
