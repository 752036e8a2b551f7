import NIOCore
import NIOSSL
import NIOTLS

/// STARTTLS on a live connection: the last plain-text bytes go out, then a
/// swift-nio-ssl handler is put in front of everything else in the channel's
/// pipeline, in the same event-loop turn, so that no byte after them is
/// read or written in the clear.
enum NBDTLSUpgrade {
  /// Which side of the handshake this end takes.
  enum Role: Sendable {
    /// The server, with its context.
    case server(NIOSSLContext)
    /// The client, with its context and the host name the server's
    /// certificate must match (nil: none checked).
    case client(NIOSSLContext, serverHostname: String?)
  }

  /// More plain text arrived than the reader consumed before STARTTLS.
  struct PlainTextAfterStartTLS: Error, CustomStringConvertible {
    var description: String { "unexpected plain-text data after STARTTLS" }
  }

  /// Sends `plainText` (the server's STARTTLS acknowledgement; nothing for a
  /// client, which has read it), starts TLS and returns the peer's
  /// certificate (nil when it sent none) once the handshake completed;
  /// throws the handshake's error. `consumed`: the bytes the reader took
  /// from the connection; when the pipeline's ``NBDByteCounter`` has read
  /// more, plain text is waiting to pass for TLS data, and the connection
  /// is closed instead (checked in the same event-loop turn that installs
  /// TLS, so nothing can slip in between).
  static func start(
    on channel: any Channel, sending plainText: ByteBuffer?, consumed: Int, role: Role
  ) async throws -> NIOSSLCertificate? {
    let handshake = channel.eventLoop.makePromise(of: NIOSSLCertificate?.self)
    channel.eventLoop.execute {
      do {
        let pipeline = channel.pipeline.syncOperations
        guard try pipeline.handler(type: NBDByteCounter.self).count == consumed else {
          throw PlainTextAfterStartTLS()
        }
        if let plainText { channel.writeAndFlush(plainText, promise: nil) }
        let tls: NIOSSLHandler =
          switch role {
          case .server(let context): NIOSSLServerHandler(context: context)
          case .client(let context, let host):
            try NIOSSLClientHandler(context: context, serverHostname: host)
          }
        try pipeline.addHandler(tls, position: .first)
        try pipeline.addHandler(HandshakeWatcher(tls, handshake), position: .after(tls))
      } catch {
        handshake.fail(error)
        channel.close(promise: nil)
      }
    }
    return try await handshake.futureResult.get()
  }

  /// Completes the handshake promise: with the peer's certificate when
  /// swift-nio-ssl reports the handshake done, with the error when one is
  /// caught first or the connection ends; then leaves the pipeline.
  private final class HandshakeWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let tls: NIOSSLHandler
    private var promise: EventLoopPromise<NIOSSLCertificate?>?

    init(_ tls: NIOSSLHandler, _ promise: EventLoopPromise<NIOSSLCertificate?>) {
      self.tls = tls
      self.promise = promise
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
      context.fireUserInboundEventTriggered(event)
      if case .handshakeCompleted? = event as? TLSUserEvent, let promise {
        self.promise = nil
        promise.succeed(tls.peerCertificate)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
      }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
      fail(error)
      context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
      fail(ChannelError.eof)
      context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
      fail(ChannelError.ioOnClosedChannel)
    }

    private func fail(_ error: any Error) {
      guard let promise else { return }
      self.promise = nil
      promise.fail(error)
    }
  }
}

extension NBDTLSUpgrade {
  /// A handshake error as a sentence: the reason BoringSSL gives, in words
  /// ("certificate verify failed"), or the error's own description.
  static func describe(_ error: any Error) -> String {
    switch error {
    case NIOSSLError.handshakeFailed(.sslError(let stack)):
      let reasons = stack.map { reason(of: "\($0)") }
      return reasons.isEmpty ? "\(error)" : reasons.joined(separator: "; ")
    case ChannelError.eof, ChannelError.ioOnClosedChannel:
      return "the peer closed the connection"
    default:
      return "\(error)"
    }
  }

  /// Whether the handshake failed because the client sent no certificate
  /// (GnuTLS's, and so qemu-nbd's, "No certificate was found.").
  static func isMissingPeerCertificate(_ error: any Error) -> Bool {
    guard case NIOSSLError.handshakeFailed(.sslError(let stack)) = error else { return false }
    return stack.contains { "\($0)".contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") }
  }

  /// `error:100000c0:SSL routines:OPENSSL_internal:SOME_REASON at file:line`
  /// → "some reason".
  private static func reason(of text: String) -> String {
    guard let marker = text.range(of: "OPENSSL_internal:") else { return text }
    let reason = text[marker.upperBound...].prefix { $0 != " " }
    return String(reason.lowercased().map { $0 == "_" ? " " : $0 })
  }
}
