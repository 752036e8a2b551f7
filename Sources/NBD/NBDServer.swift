import BlockCore
import NIOCore
import NIOPosix
import SystemPackage

#if canImport(Glibc)
  import Glibc
#endif

/// Where an ``NBDServer`` listens.
public enum NBDListenAddress: Sendable, Equatable {
  /// A Unix socket at an absolute path (created, and unlinked on shutdown).
  case unix(path: String)
  /// TCP on a host and port.
  case tcp(host: String, port: Int)
  /// A socket already bound and listening, inherited from the parent
  /// (systemd socket activation: fd 3).
  case inherited(descriptor: Int32)
}

/// An NBD server for one export: accepts clients on swift-nio event loops and
/// serves each on ``BlockActor`` through the engine.
///
/// Lifetime as qemu-nbd 7.2: nothing is accepted before
/// ``run(backend:export:)``, and then at most `shared` clients at once (0: no
/// limit); later ones wait in the kernel's listen backlog (`shared` long, or
/// `SOMAXCONN` when `persistent` or unlimited), so that once it is full the
/// kernel refuses further connections, and clients still waiting when the
/// server stops are reset by the kernel, never accepted. Unless
/// `persistent`, the server stops once a client that reached transmission
/// leaves and no other client is connected.
@BlockActor
public final class NBDServer {
  /// An error while listening: the message qemu-nbd prints.
  public struct ListenError: Error, CustomStringConvertible {
    /// The text after the program name.
    public let description: String
  }

  private var backend: BlockBackend?
  private var export = NBDExportInfo(size: 0)
  private var bitmaps: [DirtyBitmap] = []
  private let persistent: Bool
  private let shared: Int
  private let report: @BlockActor (String) -> Void
  private var listeners: [NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>] = []
  private var unixPaths: [String] = []
  private var clients: [ObjectIdentifier: any Channel] = [:]
  private var active = 0
  private var slotWaiters: [CheckedContinuation<Bool, Never>] = []
  private var stopping = false
  private let handshakeLimit: Duration?
  private let extendedHeaders: Bool
  private let tls: NBDServerTLS?
  private let maxRequests: Int
  private let payloadBudget: Int

  /// A server that keeps running after its last client unless `persistent`
  /// is false, and takes `shared` clients at once; `report` receives runtime
  /// messages (without the program name). A client that has not reached
  /// transmission `handshakeLimit` after it was served is dropped (QEMU
  /// 9.1's answer to CVE-2024-7409, 10 s by default; nil: no limit).
  /// `extendedHeaders`: whether NBD_OPT_EXTENDED_HEADERS is offered (off:
  /// UNSUP, exactly as qemu-nbd 7.2; a 7.2 client never asks either way).
  /// `tls`: clients must STARTTLS before anything else (qemu-nbd
  /// `--tls-creds`). `maxRequests`: requests one connection may have in
  /// flight (qemu-nbd 7.2: 16), holding at most `payloadBudget` bytes of
  /// READ and WRITE data (by default qemu-nbd 7.2's own worst case,
  /// ``NBDProtocol/payloadBytesInFlight``).
  public init(
    persistent: Bool, shared: Int, handshakeLimit: Duration? = .seconds(10),
    extendedHeaders: Bool = true, tls: NBDServerTLS? = nil,
    maxRequests: Int = NBDProtocol.defaultServerRequestsInFlight,
    payloadBudget: Int = NBDProtocol.payloadBytesInFlight,
    report: @escaping @BlockActor (String) -> Void
  ) {
    self.maxRequests = maxRequests
    self.payloadBudget = payloadBudget
    self.tls = tls
    self.persistent = persistent
    self.shared = shared
    self.handshakeLimit = handshakeLimit
    self.extendedHeaders = extendedHeaders
    self.report = report
  }

  /// The listen backlog qemu-nbd 7.2 asks for: `shared`, or `SOMAXCONN`
  /// when persistent or unlimited.
  var backlog: Int32 {
    persistent || shared == 0 ? SOMAXCONN : min(Int32(clamping: shared), SOMAXCONN)
  }

  /// Starts listening on `address` (clients wait in the backlog until
  /// ``run(backend:export:)`` serves them).
  public func listen(on address: NBDListenAddress) async throws {
    // Connections are accepted one at a time, only when the server wants
    // one (``acceptNext()``): the others stay in the kernel's backlog.
    let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .serverChannelOption(.backlog, value: backlog)
      .serverChannelOption(.autoRead, value: false)
      .serverChannelOption(.maxMessagesPerRead, value: 1)
    @Sendable func wrap(_ channel: any Channel) -> EventLoopFuture<
      NIOAsyncChannel<ByteBuffer, ByteBuffer>
    > {
      channel.eventLoop.makeCompletedFuture {
        // First in the pipeline: what STARTTLS checks against (NBDByteCounter).
        try channel.pipeline.syncOperations.addHandler(NBDByteCounter())
        return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
      }
    }
    do {
      switch address {
      case .unix(let path):
        do {
          let channel = try await bootstrap.bind(
            unixDomainSocketPath: path, cleanupExistingSocketFile: true,
            childChannelInitializer: wrap)
          listeners.append(channel)
          unixPaths.append(path)
        } catch {
          throw ListenError(
            description: "Failed to bind socket to \(path): \(Self.text(of: error))")
        }
      case .tcp(let host, let port):
        do {
          let channel = try await bootstrap.childChannelOption(
            .socketOption(.tcp_nodelay), value: 1
          ).bind(host: host, port: port, childChannelInitializer: wrap)
          listeners.append(channel)
        } catch {
          throw ListenError(
            description: "Failed to find an available port: \(Self.text(of: error))")
        }
      case .inherited(let descriptor):
        let channel = try await bootstrap.bind(descriptor, childChannelInitializer: wrap)
        listeners.append(channel)
      }
    }
  }

  private static func text(of error: any Error) -> String {
    if let error = error as? IOError { return Errno.describe(Errno(rawValue: error.errnoCode)) }
    return "\(error)"
  }

  /// Serves clients until ``shutdown()`` (or, unless persistent, the last
  /// negotiated client leaves); then closes every connection and unlinks
  /// the Unix sockets. `bitmaps` are the dirty bitmaps behind
  /// `export.bitmaps`, in the same order.
  public func run(backend: BlockBackend, export: NBDExportInfo, bitmaps: [DirtyBitmap] = [])
    async
  {
    precondition(bitmaps.count == export.bitmaps.count)
    self.backend = backend
    self.export = export
    self.bitmaps = bitmaps
    acceptNext()
    await withTaskGroup(of: Void.self) { group in
      for listener in listeners {
        group.addTask { await self.accept(on: listener) }
      }
    }
    for path in unixPaths { _ = unlink(path) }
    unixPaths = []
  }

  /// Closes the listeners and unlinks the Unix sockets without serving
  /// (when the image cannot be opened after listening).
  public func stop() async {
    shutdown()
    for listener in listeners {
      try? await listener.channel.closeFuture.get()
      // Nothing was accepted (``acceptNext()`` never ran), but a channel
      // that reached the stream must still be finished, never dropped.
      try? await listener.executeThenClose { inbound in
        for try await client in inbound { await Self.refuse(client) }
      }
    }
    for path in unixPaths { _ = unlink(path) }
    unixPaths = []
  }

  /// Stops accepting, drops every client and lets ``run(backend:export:)`` return.
  public func shutdown() {
    guard !stopping else { return }
    stopping = true
    for listener in listeners { listener.channel.close(promise: nil) }
    for client in clients.values { client.close(promise: nil) }
    let waiters = slotWaiters
    slotWaiters = []
    for waiter in waiters { waiter.resume(returning: false) }
  }

  private func accept(on listener: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>)
    async
  {
    try? await listener.executeThenClose { inbound in
      try await withThrowingDiscardingTaskGroup { group in
        for try await client in inbound {
          guard await takeSlot() else {
            await Self.refuse(client)
            continue
          }
          let id = ObjectIdentifier(client.channel)
          clients[id] = client.channel
          group.addTask { await self.serve(client, id: id) }
          acceptNext()
        }
      }
    }
  }

  /// Asks the listeners for one more connection each, when a slot is free.
  private func acceptNext() {
    guard !stopping, shared == 0 || active < shared else { return }
    for listener in listeners { listener.channel.read() }
  }

  /// Closes a connection the server will not serve (its writer finished, as
  /// swift-nio requires of every channel that reached the stream).
  private static func refuse(_ client: NIOAsyncChannel<ByteBuffer, ByteBuffer>) async {
    try? await client.executeThenClose { _, _ in }
  }

  private func serve(_ client: NIOAsyncChannel<ByteBuffer, ByteBuffer>, id: ObjectIdentifier)
    async
  {
    var negotiated = false
    guard let backend else {
      clients[id] = nil
      releaseSlot(negotiated: false)
      return
    }
    let connection = NBDConnection(
      backend: backend, export: export, bitmaps: bitmaps, handshakeLimit: handshakeLimit,
      extendedHeaders: extendedHeaders, tls: tls, maxRequests: maxRequests,
      payloadBudget: payloadBudget, report: report)
    await connection.serve(client) { negotiated = true }
    clients[id] = nil
    releaseSlot(negotiated: negotiated)
  }

  private func takeSlot() async -> Bool {
    if stopping { return false }
    if shared > 0 && active >= shared {
      guard await withCheckedContinuation({ slotWaiters.append($0) }), !stopping else {
        return false
      }
    }
    active += 1
    return true
  }

  private func releaseSlot(negotiated: Bool) {
    active -= 1
    if negotiated && active == 0 && !persistent {
      shutdown()
      return
    }
    if !slotWaiters.isEmpty {
      slotWaiters.removeFirst().resume(returning: true)
    } else {
      acceptNext()
    }
  }
}
