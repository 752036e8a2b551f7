/// What a client learns about an export during the handshake, and what the
/// server derives from it as qemu-nbd 7.2 does (`nbd_export_create`,
/// `nbd_negotiate_handle_info`).
public struct NBDExportInfo: Sendable, Equatable {
  /// The export's name (`-x`, default empty).
  public var name: String
  /// The description (`-D`), sent in LIST and INFO_DESCRIPTION.
  public var description: String?
  /// The size in bytes (qemu-nbd rounds the image's length down to 512).
  public var size: UInt64
  /// Whether clients may only read.
  public var readOnly: Bool
  /// Whether several clients may connect at once (`-e` ≠ 1): CAN_MULTI_CONN.
  public var multiConn: Bool
  /// The image's request alignment, the minimum block size when a client asks.
  public var requestAlignment: UInt32
  /// The longest transfer the image takes (0: no limit).
  public var maxTransfer: UInt32
  /// Whether the `qemu:allocation-depth` context is offered (qemu-nbd -A).
  public var allocationDepth: Bool
  /// The names of the dirty bitmaps offered as `qemu:dirty-bitmap:NAME`
  /// contexts (qemu-nbd -B), in context-id order.
  public var bitmaps: [String]

  /// Creates the facts of an export.
  public init(
    name: String = "", description: String? = nil, size: UInt64, readOnly: Bool = false,
    multiConn: Bool = false, requestAlignment: UInt32 = 1, maxTransfer: UInt32 = 0,
    allocationDepth: Bool = false, bitmaps: [String] = []
  ) {
    self.allocationDepth = allocationDepth
    self.bitmaps = bitmaps
    self.name = name
    self.description = description
    self.size = size
    self.readOnly = readOnly
    self.multiConn = multiConn
    self.requestAlignment = requestAlignment
    self.maxTransfer = maxTransfer
  }

  /// The transmission flags qemu-nbd 7.2 sends (reference §1.3): DF only once
  /// structured replies are negotiated.
  public func transmissionFlags(structuredReplies: Bool) -> NBDTransmissionFlags {
    transmissionFlags(mode: structuredReplies ? .structured : .simple)
  }

  /// The transmission flags for a client in `mode`: qemu-nbd 7.2's, plus
  /// BLOCK_STATUS_PAYLOAD once extended headers are negotiated (as QEMU
  /// 8.2+).
  public func transmissionFlags(mode: NBDHeaderMode) -> NBDTransmissionFlags {
    let structuredReplies = mode >= .structured
    var flags: NBDTransmissionFlags = [.hasFlags, .sendFlush, .sendFUA, .sendCache]
    if readOnly {
      flags.insert(.readOnly)
    } else {
      flags.formUnion([.sendTrim, .sendWriteZeroes, .sendFastZero])
    }
    if structuredReplies { flags.insert(.sendDF) }
    if mode == .extended { flags.insert(.blockStatusPayload) }
    if multiConn { flags.insert(.canMultiConn) }
    return flags
  }

  /// INFO_BLOCK_SIZE's minimum, preferred and maximum: the alignment only for
  /// a client that asked for sizes (or sent INFO), else 1; preferred at least
  /// 4096; maximum at most 32 MiB.
  public func blockSizes(clientAsked: Bool) -> (minimum: UInt32, preferred: UInt32, maximum: UInt32)
  {
    let minimum = clientAsked ? max(requestAlignment, 1) : 1
    let limit = UInt32(NBDProtocol.maxBufferSize)
    let maximum = maxTransfer == 0 ? limit : min(maxTransfer, limit)
    return (minimum, max(4096, minimum), maximum)
  }
}
