import BlockCore

/// The connection of an `nbd` node across reconnects, with QEMU 7.2's
/// semantics (`block/nbd.c`, `nbd/client-connection.c`):
///
/// - `open-timeout`: the first connection is retried until the timeout
///   passes (0: one attempt), then the last attempt's error is reported.
/// - Once open, a broken connection is reconnected in the background, with
///   pauses of 1, 2, 4, 8, then 16 seconds between attempts, whatever
///   `reconnect-delay` says.
/// - `reconnect-delay` > 0: for that many seconds after the break, requests
///   (those in flight, re-sent, and new ones) wait for the new connection;
///   after it they fail with EIO at once until a connection is back.
///   With 0, they fail with EIO at once.
@BlockActor
final class NBDReconnectingConnection {
  private let config: NBDClientConfig
  private let handshake: NBDClientHandshake
  /// What the first connection negotiated (the node's size, flags, limits).
  let export: NBDNegotiatedExport
  private var connection: NBDClientConnection?
  private var requestsWait = false
  private var waiters: [CheckedContinuation<NBDClientConnection?, Never>] = []
  private var reconnecting: Task<Void, Never>?
  private var delay: Task<Void, Never>?
  private var closed = false

  /// The longest pause between connection attempts (QEMU's 16 seconds).
  static let maximumPause: Duration = .seconds(16)

  private init(
    config: NBDClientConfig, handshake: NBDClientHandshake, connection: NBDClientConnection
  ) {
    self.config = config
    self.handshake = handshake
    self.connection = connection
    export = connection.export
  }

  /// Connects, retrying for `open-timeout` seconds.
  static func open(_ config: NBDClientConfig, handshake: NBDClientHandshake) async throws
    -> NBDReconnectingConnection
  {
    let deadline = ContinuousClock.now + .seconds(Int(config.openTimeout))
    var pause: Duration = .seconds(1)
    while true {
      do {
        let connection = try await NBDClientConnection.open(
          to: config.server, handshake: handshake)
        return NBDReconnectingConnection(
          config: config, handshake: handshake, connection: connection)
      } catch {
        let now = ContinuousClock.now
        guard config.openTimeout > 0, now < deadline else { throw error }
        try? await Task.sleep(until: min(now + pause, deadline))
        pause = min(pause * 2, maximumPause)
      }
    }
  }

  /// Runs `body` on the current connection; when the connection breaks,
  /// waits for a new one and runs it again while `reconnect-delay` allows.
  func perform<Result>(_ body: (NBDClientConnection) async throws -> Result) async throws
    -> Result
  {
    while true {
      guard let current = await usableConnection() else { throw BlockError(.ioError) }
      do {
        return try await body(current)
      } catch is NBDConnectionLost {
        connectionBroke(current)
        if !requestsWait { throw BlockError(.ioError) }
      }
    }
  }

  /// The connection, or (while reconnecting within the delay) the next one;
  /// nil when requests must fail.
  private func usableConnection() async -> NBDClientConnection? {
    if let connection { return connection }
    guard requestsWait, !closed else { return nil }
    return await withCheckedContinuation { waiters.append($0) }
  }

  private func connectionBroke(_ broken: NBDClientConnection) {
    guard connection === broken, !closed else { return }
    connection = nil
    Task { await broken.close() }
    // An inherited descriptor cannot be connected again (its number may
    // name something else once closed): requests fail from now on.
    if case .fd = config.server {
      requestsWait = false
      wake(with: nil)
      return
    }
    requestsWait = config.reconnectDelay > 0
    if requestsWait {
      let seconds = Int(config.reconnectDelay)
      delay = Task {
        try? await Task.sleep(for: .seconds(seconds))
        guard !Task.isCancelled else { return }
        self.delayExpired()
      }
    }
    reconnecting = Task { await self.reconnect() }
  }

  private func delayExpired() {
    requestsWait = false
    wake(with: nil)
  }

  private func wake(with connection: NBDClientConnection?) {
    let waiting = waiters
    waiters = []
    for waiter in waiting { waiter.resume(returning: connection) }
  }

  /// Attempts a connection now, then after growing pauses, until one
  /// succeeds or the node closes.
  private func reconnect() async {
    var pause: Duration = .seconds(1)
    while !closed {
      if let fresh = try? await NBDClientConnection.open(to: config.server, handshake: handshake) {
        if closed {
          await fresh.close()
          return
        }
        connection = fresh
        delay?.cancel()
        delay = nil
        requestsWait = false
        wake(with: fresh)
        return
      }
      try? await Task.sleep(for: pause)
      pause = min(pause * 2, Self.maximumPause)
    }
  }

  /// Stops reconnecting, fails waiting requests and closes the connection.
  func close() async {
    closed = true
    reconnecting?.cancel()
    delay?.cancel()
    wake(with: nil)
    if let connection {
      self.connection = nil
      await connection.close()
    }
  }
}
