/// Numbers of the NBD protocol (the spec's `doc/proto.md`), as QEMU 7.2's
/// `include/block/nbd.h` names them.
public enum NBDProtocol {
  /// `NBDMAGIC`, the first eight bytes of every greeting.
  public static let greetingMagic: UInt64 = 0x4e42_444d_4147_4943
  /// `IHAVEOPT`: the newstyle greeting and every option header.
  public static let optionMagic: UInt64 = 0x4948_4156_454f_5054
  /// The magic of every option reply.
  public static let optionReplyMagic: UInt64 = 0x3_e889_0455_65a9
  /// The magic of a request header.
  public static let requestMagic: UInt32 = 0x2560_9513
  /// The magic of a simple reply.
  public static let simpleReplyMagic: UInt32 = 0x6744_6698
  /// The magic of a structured reply chunk.
  public static let structuredReplyMagic: UInt32 = 0x668e_33ef
  /// The magic of an extended request header (32 bytes, 64-bit length),
  /// the only request header once NBD_OPT_EXTENDED_HEADERS is negotiated.
  public static let extendedRequestMagic: UInt32 = 0x21e4_1c71
  /// The magic of an extended reply chunk (32 bytes: the request's offset
  /// and a 64-bit payload length), the only reply once extended headers
  /// are negotiated.
  public static let extendedReplyMagic: UInt32 = 0x6e8a_278c

  /// Handshake flags the server sends: FIXED_NEWSTYLE | NO_ZEROES.
  public static let handshakeFlags: UInt16 = 0x0003
  /// Client flag bit 0: the client speaks fixed newstyle.
  public static let clientFixedNewstyle: UInt32 = 0x1
  /// Client flag bit 1: no 124 zero bytes after an EXPORT_NAME reply.
  public static let clientNoZeroes: UInt32 = 0x2

  /// The longest option payload and READ/WRITE length qemu-nbd accepts (32 MiB).
  public static let maxBufferSize = 32 << 20
  /// The longest string (export name, description, query) in the protocol.
  public static let maxStringSize = 4096
  /// The most requests one connection of qemu-nbd 7.2 has in flight
  /// (QEMU's `MAX_NBD_REQUESTS`).
  public static let maxRequestsInFlight = 16
  /// The most requests one connection of Spindle's server has in flight by
  /// default (`spindle serve --max-requests`).
  public static let defaultServerRequestsInFlight = 64
  /// The most READ and WRITE bytes one connection of the server has in
  /// flight, whatever the request count: qemu-nbd 7.2's worst case (16
  /// requests of 32 MiB), so that more requests never cost more memory.
  public static let payloadBytesInFlight = maxRequestsInFlight * maxBufferSize
  /// The id of the `base:allocation` context (QEMU's `NBD_META_ID_BASE_ALLOCATION`).
  public static let baseAllocationID: UInt32 = 0
  /// The name of the allocation context.
  public static let baseAllocation = "base:allocation"
  /// The id of the `qemu:allocation-depth` context (QEMU's
  /// `NBD_META_ID_ALLOCATION_DEPTH`).
  public static let allocationDepthID: UInt32 = 1
  /// The name of QEMU's allocation-depth context (qemu-nbd -A): each extent's
  /// flags are the depth in the backing chain of the layer that allocates it
  /// (0 = unallocated, 1 = the top image).
  public static let allocationDepth = "qemu:allocation-depth"
  /// The id of the first `qemu:dirty-bitmap:NAME` context (QEMU's
  /// `NBD_META_ID_DIRTY_BITMAP`); the export's next bitmaps follow.
  public static let firstDirtyBitmapID: UInt32 = 2
  /// The prefix of QEMU's dirty-bitmap contexts (qemu-nbd -B NAME): each
  /// extent's flags are 1 where the bitmap is dirty, 0 where clean.
  public static let dirtyBitmapPrefix = "qemu:dirty-bitmap:"
}

/// Option numbers (`NBD_OPT_*`).
public enum NBDOption: UInt32, Sendable {
  case exportName = 1
  case abort = 2
  case list = 3
  case peekExport = 4
  case startTLS = 5
  case info = 6
  case go = 7
  case structuredReply = 8
  case listMetaContext = 9
  case setMetaContext = 10
  /// NBD_OPT_EXTENDED_HEADERS (the spec's extension, QEMU 8.2+): 32-byte
  /// request and reply headers with 64-bit lengths from transmission on.
  case extendedHeaders = 11

  /// QEMU's `nbd_opt_lookup` name of an option number.
  public static func name(of option: UInt32) -> String {
    switch NBDOption(rawValue: option) {
    case .exportName: "export name"
    case .abort: "abort"
    case .list: "list"
    case .peekExport: "peek export"
    case .startTLS: "starttls"
    case .info: "info"
    case .go: "go"
    case .structuredReply: "structured reply"
    case .listMetaContext: "list meta context"
    case .setMetaContext: "set meta context"
    case .extendedHeaders: "extended headers"
    case nil: "<unknown>"
    }
  }
}

/// Option reply types (`NBD_REP_*`); errors have bit 31 set.
public enum NBDReplyType: UInt32, Sendable {
  case ack = 1
  case server = 2
  case info = 3
  case metaContext = 4
  case unsupported = 0x8000_0001
  case policy = 0x8000_0002
  case invalid = 0x8000_0003
  case platform = 0x8000_0004
  case tlsRequired = 0x8000_0005
  case unknown = 0x8000_0006
  case shutdown = 0x8000_0007
  case blockSizeRequired = 0x8000_0008
  case tooBig = 0x8000_0009
  /// NBD_REP_ERR_EXT_HEADER_REQD: STRUCTURED_REPLY after extended headers
  /// were negotiated (no downgrade).
  case extendedHeaderRequired = 0x8000_000a
}

/// Information types of INFO/GO (`NBD_INFO_*`).
public enum NBDInfoType: UInt16, Sendable {
  case export = 0
  case name = 1
  case description = 2
  case blockSize = 3
}

/// Transmission flags (`NBD_FLAG_*`), sent with the export size.
public struct NBDTransmissionFlags: OptionSet, Sendable, Hashable {
  public let rawValue: UInt16
  public init(rawValue: UInt16) { self.rawValue = rawValue }
  public static let hasFlags = Self(rawValue: 1 << 0)
  public static let readOnly = Self(rawValue: 1 << 1)
  public static let sendFlush = Self(rawValue: 1 << 2)
  public static let sendFUA = Self(rawValue: 1 << 3)
  public static let rotational = Self(rawValue: 1 << 4)
  public static let sendTrim = Self(rawValue: 1 << 5)
  public static let sendWriteZeroes = Self(rawValue: 1 << 6)
  public static let sendDF = Self(rawValue: 1 << 7)
  public static let canMultiConn = Self(rawValue: 1 << 8)
  public static let sendResize = Self(rawValue: 1 << 9)
  public static let sendCache = Self(rawValue: 1 << 10)
  public static let sendFastZero = Self(rawValue: 1 << 11)
  /// NBD_FLAG_BLOCK_STATUS_PAYLOAD (extended headers only): BLOCK_STATUS
  /// may carry a payload (u64 effect length, u32 context ids) that picks a
  /// subset of the negotiated contexts.
  public static let blockStatusPayload = Self(rawValue: 1 << 12)
}

/// Commands (`NBD_CMD_*`).
public enum NBDCommand: UInt16, Sendable {
  case read = 0
  case write = 1
  case disconnect = 2
  case flush = 3
  case trim = 4
  case cache = 5
  case writeZeroes = 6
  case blockStatus = 7

  /// QEMU's `nbd_cmd_lookup` name.
  public var name: String {
    switch self {
    case .read: "read"
    case .write: "write"
    case .disconnect: "disconnect"
    case .flush: "flush"
    case .trim: "trim"
    case .cache: "cache"
    case .writeZeroes: "write zeroes"
    case .blockStatus: "block status"
    }
  }
}

/// Command flags (`NBD_CMD_FLAG_*`).
public struct NBDCommandFlags: OptionSet, Sendable, Hashable {
  public let rawValue: UInt16
  public init(rawValue: UInt16) { self.rawValue = rawValue }
  public static let fua = Self(rawValue: 1 << 0)
  public static let noHole = Self(rawValue: 1 << 1)
  public static let dontFragment = Self(rawValue: 1 << 2)
  public static let reqOne = Self(rawValue: 1 << 3)
  public static let fastZero = Self(rawValue: 1 << 4)
  /// NBD_CMD_FLAG_PAYLOAD_LEN (extended headers only): the length is that of
  /// a payload following the header, not the command's effect length.
  public static let payloadLength = Self(rawValue: 1 << 5)
}

/// Structured reply chunk types (`NBD_REPLY_TYPE_*`).
public enum NBDChunkType: UInt16, Sendable {
  case none = 0
  case offsetData = 1
  case offsetHole = 2
  case blockStatus = 5
  /// NBD_REPLY_TYPE_BLOCK_STATUS_EXT (extended headers only): u32 context
  /// id, u32 descriptor count, then (u64 length, u64 flags) descriptors.
  case blockStatusExtended = 6
  case error = 0x8001
}

/// Which headers a connection's transmission phase uses (QEMU's `NBDMode`,
/// the modes Spindle speaks): each implies the ones before it.
public enum NBDHeaderMode: Int, Sendable, Comparable {
  /// Compact requests, simple replies only.
  case simple
  /// Compact requests, simple replies or structured chunks
  /// (NBD_OPT_STRUCTURED_REPLY).
  case structured
  /// Extended requests and extended chunks only (NBD_OPT_EXTENDED_HEADERS).
  case extended

  public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// Error values on the wire (`NBD_EPERM` ...).
public enum NBDError: UInt32, Sendable {
  case perm = 1
  case io = 5
  case noMemory = 12
  case invalid = 22
  case noSpace = 28
  case overflow = 75
  case notSupported = 95
  case shutdown = 108
}

/// Bits of a `base:allocation` extent.
public struct NBDAllocationFlags: OptionSet, Sendable, Hashable {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }
  public static let hole = Self(rawValue: 1)
  public static let zero = Self(rawValue: 2)
}
