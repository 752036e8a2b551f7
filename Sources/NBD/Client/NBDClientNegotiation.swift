import NIOCore

/// Runs a client handshake on its socket's event loop (a swift-nio thread),
/// not on ``BlockActor``: the handshake needs nothing of the block layer, and
/// a busy block-layer thread must not stall it past a server's time limit
/// (qemu-nbd drops clients that have not negotiated within 10 seconds).
actor NBDClientNegotiation {
  private let socket: NBDClientChannel

  init(_ socket: NBDClientChannel) {
    self.socket = socket
  }

  nonisolated var unownedExecutor: UnownedSerialExecutor {
    socket.channel.eventLoop.executor.asUnownedSerialExecutor()
  }

  /// Negotiates with `handshake`; returns what was agreed and the bytes
  /// that arrived after the handshake (the start of the replies), for the
  /// reader that reads on from the socket's stream.
  func run(_ handshake: NBDClientHandshake) async throws -> (
    export: NBDNegotiatedExport, leftover: ByteBuffer
  ) {
    var reader = NBDInboundReader(socket.inbound)
    let export = try await handshake.run(&reader, socket)
    return (export, reader.unread)
  }
}
