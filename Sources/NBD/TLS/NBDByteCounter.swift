import NIOCore

/// Counts the bytes a connection's pipeline has read from its socket, so
/// that STARTTLS can tell whether plain text arrived after the option that
/// its reader has not consumed (bytes a peer — or someone on the path —
/// sent before the handshake, which must never pass for TLS data). Sits at
/// the head of the pipeline from the start; TLS goes in front of it.
final class NBDByteCounter: ChannelInboundHandler, RemovableChannelHandler {
  typealias InboundIn = ByteBuffer
  typealias InboundOut = ByteBuffer

  /// Bytes read so far.
  private(set) var count = 0

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    count += unwrapInboundIn(data).readableBytes
    context.fireChannelRead(data)
  }
}
