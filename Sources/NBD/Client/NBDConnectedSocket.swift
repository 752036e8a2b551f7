import BlockCore
import NIOCore

/// Connects to `address` on `loop` and runs `body` over the socket (on the
/// caller's isolation: the negotiation and the listing run on the socket's
/// event loop). On failure the socket is closed; a ``BlockError`` passes
/// as it is, any other error becomes QEMU's "Failed to read from socket:
/// ..." EIO. On success the socket stays open for `body`'s result.
func withConnectedNBDSocket<T>(
  to address: NBDServerAddress, on loop: any EventLoop,
  isolation: isolated (any Actor)? = #isolation,
  _ body: (NBDClientChannel) async throws -> T
) async throws -> T {
  let connecting = NBDClientConnection.connect(to: address, on: loop)
  let socket = try await withCheckedThrowingContinuation {
    (connected: CheckedContinuation<NBDClientChannel, any Error>) in
    connecting.whenComplete { connected.resume(with: $0) }
  }
  do {
    return try await body(socket)
  } catch let error as BlockError {
    socket.close()
    throw error
  } catch {
    socket.close()
    throw BlockError(
      .ioError, "Failed to read from socket: \(NBDClientConnection.socketErrorText(error))")
  }
}
