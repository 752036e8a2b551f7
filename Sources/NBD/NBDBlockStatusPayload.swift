import NIOCore

/// The payload of an extended BLOCK_STATUS request with
/// NBD_CMD_FLAG_PAYLOAD_LEN (offered by NBD_FLAG_BLOCK_STATUS_PAYLOAD): the
/// effect length, then the ids of the negotiated contexts wanted.
public struct NBDBlockStatusPayload: Sendable, Equatable {
  /// The length of the range asked about.
  public var effectLength: UInt64
  /// The contexts wanted (a non-empty subset of those negotiated).
  public var contextIDs: Set<UInt32>

  /// Creates a payload.
  public init(effectLength: UInt64, contextIDs: Set<UInt32>) {
    self.effectLength = effectLength
    self.contextIDs = contextIDs
  }

  /// Parses `payload` as QEMU 8.2+ does (`nbd_co_block_status_payload_read`):
  /// a u64 effect length and at least one u32 id, each one of `negotiated`
  /// and none twice; nil for anything else (the request then fails with
  /// EINVAL, the connection goes on).
  public static func parse(_ payload: ByteBuffer, negotiated: Set<UInt32>) -> NBDBlockStatusPayload?
  {
    var payload = payload
    let bytes = payload.readableBytes
    guard bytes % 4 == 0, bytes >= 12, bytes <= 8 + 4 * negotiated.count,
      let effectLength = payload.readInteger(as: UInt64.self)
    else { return nil }
    var ids: Set<UInt32> = []
    while let id = payload.readInteger(as: UInt32.self) {
      guard negotiated.contains(id), ids.insert(id).inserted else { return nil }
    }
    return NBDBlockStatusPayload(effectLength: effectLength, contextIDs: ids)
  }

  /// Encodes the payload (a client's side), the ids in ascending order.
  public func encode(into buffer: inout ByteBuffer) {
    buffer.writeInteger(effectLength)
    for id in contextIDs.sorted() { buffer.writeInteger(id) }
  }
}
