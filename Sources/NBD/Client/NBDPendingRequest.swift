import BlockCore
import NIOCore

/// The one extent a BLOCK_STATUS request with REQ_ONE is answered with.
public struct NBDBlockStatusExtent: Sendable, Equatable {
  /// Bytes the extent covers from the request's offset (past 4 GiB only
  /// with extended headers).
  public var length: UInt64
  /// The context's flags (`base:allocation`: bit 0 HOLE, bit 1 ZERO).
  public var flags: UInt32
}

/// A request sent and not yet fully answered: where its READ data goes, what
/// its chunks said so far, and the task waiting for it.
@BlockActor
final class NBDPendingRequest {
  let command: NBDCommand
  let offset: UInt64
  let length: UInt64
  private let destination: IOVector?
  private let contextID: UInt32?
  private var extent: NBDBlockStatusExtent?
  private var error: BlockError?
  private var outcomeValue: Result<NBDBlockStatusExtent?, any Error>?
  private var waiter: CheckedContinuation<NBDBlockStatusExtent?, any Error>?

  init(
    command: NBDCommand, offset: UInt64, length: UInt64, destination: IOVector?,
    contextID: UInt32?
  ) {
    self.command = command
    self.offset = offset
    self.length = length
    self.destination = destination
    self.contextID = contextID
  }

  /// What the chunks received so far amount to.
  var result: Result<NBDBlockStatusExtent?, any Error> {
    if let error { return .failure(error) }
    if command == .blockStatus && extent == nil {
      return .failure(BlockError(.ioError, "server did not reply with any status extents"))
    }
    return .success(extent)
  }

  /// Waits for the reply.
  func outcome() async throws -> NBDBlockStatusExtent? {
    if let outcomeValue { return try outcomeValue.get() }
    return try await withCheckedThrowingContinuation { waiter = $0 }
  }

  /// Ends the request.
  func finish(_ result: Result<NBDBlockStatusExtent?, any Error>) {
    guard outcomeValue == nil else { return }
    outcomeValue = result
    waiter?.resume(with: result)
    waiter = nil
  }

  /// Copies READ data for the range at `at` into the destination.
  func receiveData(at position: UInt64, _ data: ByteBuffer) {
    guard let destination else { return }
    let start = Int(position - offset)
    data.withUnsafeReadableBytes { destination.copyIn($0, at: start) }
  }

  /// Whether an OFFSET_DATA chunk of `count` bytes at `position` may be
  /// taken (a READ, inside the request).
  func acceptsData(at position: UInt64, count: UInt64) -> Bool {
    command == .read && covers(position, count)
  }

  /// Whether `start..<start+count` lies inside the request.
  private func covers(_ start: UInt64, _ count: UInt64) -> Bool {
    start >= offset && count <= length && start - offset <= length - count
  }

  /// Takes one structured (or, `extended`, extended) chunk; false for a
  /// chunk that breaks the protocol (the connection is then dropped, as
  /// QEMU does). BLOCK_STATUS_EXT is taken only with extended headers.
  func receiveChunk(type: UInt16, _ payload: ByteBuffer, extended: Bool = false) -> Bool {
    var payload = payload
    guard let chunk = NBDChunkType(rawValue: type) else {
      // An unknown error type fails only its request; any other unknown
      // type breaks the protocol.
      return type & 0x8000 != 0 && receiveError(&payload)
    }
    switch chunk {
    case .none:
      return payload.readableBytes == 0
    case .offsetData:
      guard command == .read, let position = payload.readInteger(as: UInt64.self),
        covers(position, UInt64(payload.readableBytes))
      else { return false }
      receiveData(at: position, payload)
      return true
    case .offsetHole:
      guard command == .read, payload.readableBytes == 12,
        let position = payload.readInteger(as: UInt64.self),
        let count = payload.readInteger(as: UInt32.self), count > 0,
        covers(position, UInt64(count))
      else { return false }
      destination?.fill(0, at: Int(position - offset), count: Int(count))
      return true
    case .blockStatus:
      guard command == .blockStatus, payload.readableBytes >= 12,
        (payload.readableBytes - 4) % 8 == 0,
        let id = payload.readInteger(as: UInt32.self), id == contextID,
        let count = payload.readInteger(as: UInt32.self),
        let flags = payload.readInteger(as: UInt32.self), count > 0,
        extent == nil
      else { return false }
      // REQ_ONE: one extent, clipped to the request; extra ones are ignored.
      extent = NBDBlockStatusExtent(length: min(UInt64(count), length), flags: flags)
      return true
    case .blockStatusExtended:
      // u32 context id, u32 descriptor count (0: not given), then
      // (u64 length, u64 flags) descriptors.
      let descriptors = (payload.readableBytes - 8) / 16
      guard extended, command == .blockStatus, payload.readableBytes >= 24,
        (payload.readableBytes - 8) % 16 == 0,
        let id = payload.readInteger(as: UInt32.self), id == contextID,
        let given = payload.readInteger(as: UInt32.self), given == 0 || given == descriptors,
        let count = payload.readInteger(as: UInt64.self),
        let flags = payload.readInteger(as: UInt64.self), count > 0,
        flags <= UInt64(UInt32.max), extent == nil
      else { return false }
      extent = NBDBlockStatusExtent(length: min(count, length), flags: UInt32(flags))
      return true
    case .error:
      return receiveError(&payload)
    }
  }

  /// An ERROR (or unknown error-type) chunk: u32 error, u16 message length,
  /// message. The first error is the request's.
  private func receiveError(_ payload: inout ByteBuffer) -> Bool {
    guard let code = payload.readInteger(as: UInt32.self),
      let messageLength = payload.readInteger(as: UInt16.self),
      payload.readableBytes >= Int(messageLength), code != 0
    else { return false }
    if error == nil { error = NBDError.blockError(wire: code) }
    return true
  }
}
