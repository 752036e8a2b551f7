import NIOCore

/// Reads exact byte counts from a connection's inbound stream, keeping what
/// arrived beyond them for the next read.
struct NBDInboundReader {
  private var iterator: any AsyncIteratorProtocol<ByteBuffer, any Error>
  private var pending = ByteBuffer()
  /// Whether the peer closed after sending part of what the last read wanted.
  private(set) var endedMidMessage = false
  /// Bytes taken from the stream so far (consumed or waiting in `unread`).
  private(set) var received = 0

  init(_ inbound: NIOAsyncChannelInboundStream<ByteBuffer>) {
    iterator = inbound.makeAsyncIterator()
  }

  /// A reader of `inbound`, whose iterator resumes on the reader's caller's
  /// executor (no hop through Swift's shared pool).
  init(_ inbound: AsyncThrowingStream<ByteBuffer, any Error>, unread: ByteBuffer = ByteBuffer()) {
    iterator = inbound.makeAsyncIterator()
    pending = unread
  }

  /// What arrived beyond the reads so far (for a reader that goes on from
  /// the same stream on another executor).
  var unread: ByteBuffer { pending }

  /// The next `count` bytes, or nil when the peer closed the connection first.
  mutating func read(_ count: Int, isolation: isolated (any Actor)? = #isolation) async throws
    -> ByteBuffer?
  {
    while pending.readableBytes < count {
      guard var more = try await iterator.next(isolation: isolation) else {
        endedMidMessage = pending.readableBytes > 0
        return nil
      }
      received += more.readableBytes
      if pending.readableBytes == 0 {
        pending = more
      } else {
        pending.writeBuffer(&more)
      }
    }
    return pending.readSlice(length: count)
  }

  /// Hands the next `count` bytes to `body` in the pieces they arrived in,
  /// without gathering them into one buffer first (a large payload is then
  /// copied once, by `body`); false when the peer closed first.
  mutating func forEachPiece(
    _ count: Int, isolation: isolated (any Actor)? = #isolation,
    _ body: (ByteBuffer) -> Void
  ) async throws -> Bool {
    var remaining = count
    while remaining > 0 {
      if pending.readableBytes == 0 {
        guard let more = try await iterator.next(isolation: isolation) else {
          endedMidMessage = true
          return false
        }
        received += more.readableBytes
        pending = more
        continue
      }
      let piece = pending.readSlice(length: min(remaining, pending.readableBytes))!
      remaining -= piece.readableBytes
      body(piece)
    }
    return true
  }

  /// Reads and throws away `count` bytes; false when the peer closed first.
  mutating func skip(_ count: Int, isolation: isolated (any Actor)? = #isolation) async throws
    -> Bool
  {
    try await read(count, isolation: isolation) != nil
  }
}
