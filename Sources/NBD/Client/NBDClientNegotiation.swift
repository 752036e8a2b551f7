import BlockCore
import NIOCore

/// Connects and runs a client handshake on a swift-nio event loop, not on
/// ``BlockActor``: the handshake needs nothing of the block layer, and a busy
/// block-layer thread (or a busy shared pool) must not stall it past a
/// server's time limit (qemu-nbd drops clients that have not negotiated
/// within 10 seconds).
actor NBDClientNegotiation {
  private let loop: any EventLoop

  /// A negotiation on `loop` (the socket's event loop).
  init(on loop: any EventLoop) {
    self.loop = loop
  }

  nonisolated var unownedExecutor: UnownedSerialExecutor {
    loop.executor.asUnownedSerialExecutor()
  }

  /// What a handshake agreed, on which socket, and the bytes that arrived
  /// after it (the start of the replies).
  struct Negotiated: Sendable {
    let socket: NBDClientChannel
    let export: NBDNegotiatedExport
    let leftover: ByteBuffer
  }

  /// Connects to `address` and negotiates with `handshake`; on failure the
  /// socket is closed and the error carries QEMU's message.
  func connect(to address: NBDServerAddress, handshake: NBDClientHandshake) async throws
    -> Negotiated
  {
    try await withConnectedNBDSocket(to: address, on: loop) { socket in
      try await run(handshake, over: socket)
    }
  }

  /// Negotiates with `handshake` over `socket` (whose event loop this
  /// negotiation runs on).
  func run(_ handshake: NBDClientHandshake, over socket: NBDClientChannel) async throws
    -> Negotiated
  {
    var reader = NBDInboundReader(socket.inbound)
    let export = try await handshake.run(&reader, socket)
    return Negotiated(socket: socket, export: export, leftover: reader.unread)
  }
}
