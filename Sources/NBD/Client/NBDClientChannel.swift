import NIOCore

/// The client's socket as the connection uses it: inbound bytes arrive on a
/// stream that the reader consumes on the caller's executor, and writes
/// complete on it too, so that a handshake or a reply never waits for a
/// thread of Swift's shared pool (a process whose pool is busy — a loaded
/// application, or a test run — would otherwise stall the handshake past a
/// server's time limit: qemu-nbd drops clients not negotiated in 10 seconds).
struct NBDClientChannel: Sendable {
  /// The socket.
  let channel: any Channel
  /// What the server sends, until it closes or the connection fails.
  let inbound: AsyncThrowingStream<ByteBuffer, any Error>

  /// Installs the handler that feeds what `channel` reads to `continuation`
  /// (call it from the channel's initializer, on its event loop).
  static func addInboundHandler(
    to channel: any Channel,
    feeding continuation: AsyncThrowingStream<ByteBuffer, any Error>.Continuation
  ) throws {
    // The counter first: what STARTTLS checks against (NBDByteCounter).
    try channel.pipeline.syncOperations.addHandler(NBDByteCounter())
    try channel.pipeline.syncOperations.addHandler(InboundHandler(continuation))
  }

  /// Sends `buffer`; returns once swift-nio has handed it to the socket.
  func write(_ buffer: ByteBuffer, isolation: isolated (any Actor)? = #isolation) async throws {
    let channel = channel
    try await withCheckedThrowingContinuation(isolation: isolation) {
      (written: CheckedContinuation<Void, any Error>) in
      channel.writeAndFlush(buffer).whenComplete { written.resume(with: $0) }
    }
  }

  /// Half-closes: the server sees end of file, replies can still arrive.
  func finishWriting() {
    channel.close(mode: .output, promise: nil)
  }

  /// Closes the socket.
  func close() {
    channel.close(promise: nil)
  }

  /// Feeds what the channel reads to the stream and ends it when the
  /// channel closes (or fails, with the error).
  private final class InboundHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let continuation: AsyncThrowingStream<ByteBuffer, any Error>.Continuation

    init(_ continuation: AsyncThrowingStream<ByteBuffer, any Error>.Continuation) {
      self.continuation = continuation
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
      continuation.yield(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
      continuation.finish()
      context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
      continuation.finish(throwing: error)
      context.close(promise: nil)
    }
  }
}
