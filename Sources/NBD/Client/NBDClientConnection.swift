import BlockCore
import NIOCore
import NIOPosix
import NIOSSL
import SystemPackage

/// Thrown for a request that could not be answered because the connection
/// ended (the server went away, or broke the protocol).
struct NBDConnectionLost: Error {}

/// One negotiated connection to an NBD server: requests go out as soon as
/// they are issued, any number in flight, and each reply (simple or
/// structured, in any order, chunks of different requests interleaved) is
/// matched to its request by cookie.
///
/// The handshake runs on the socket's swift-nio event loop
/// (``NBDClientNegotiation``). After it, state lives on ``BlockActor``, as
/// every driver's: a reader loop on the actor decodes replies and resumes the
/// waiting request's continuation; bytes reach it through
/// ``NBDClientChannel`` without a hop through Swift's shared pool. A
/// protocol violation or a lost connection fails every request in flight
/// and every later one with ``NBDConnectionLost``.
@BlockActor
final class NBDClientConnection {
  /// What the handshake negotiated.
  let export: NBDNegotiatedExport
  private let socket: NBDClientChannel
  private var pending: [UInt64: NBDPendingRequest] = [:]
  private var nextCookie: UInt64 = 1
  private var broken = false
  private var closing = false
  private var finished: [CheckedContinuation<Void, Never>] = []
  private var readerEnded = false

  /// How long ``close()`` waits for the server to hang up after DISC before
  /// closing the socket itself.
  static let closeGracePeriod: Duration = .seconds(5)

  private init(export: NBDNegotiatedExport, socket: NBDClientChannel) {
    self.export = export
    self.socket = socket
  }

  /// Connects to `address` and negotiates (on a swift-nio event loop, see
  /// ``NBDClientNegotiation``); throws QEMU's messages ("Failed to connect to
  /// '...': ...", or the handshake's). Replies are then read on this actor.
  static func open(to address: NBDServerAddress, handshake: NBDClientHandshake) async throws
    -> NBDClientConnection
  {
    let negotiation = NBDClientNegotiation(on: MultiThreadedEventLoopGroup.singleton.next())
    let negotiated = try await negotiation.connect(to: address, handshake: handshake)
    let connection = NBDClientConnection(export: negotiated.export, socket: negotiated.socket)
    Task { @BlockActor in await connection.readReplies(after: negotiated.leftover) }
    return connection
  }

  /// A socket to `address` on `loop`, its inbound bytes on a stream; fails
  /// with QEMU's "Failed to connect to '...': ..." message.
  nonisolated static func connect(to address: NBDServerAddress, on loop: any EventLoop)
    -> EventLoopFuture<NBDClientChannel>
  {
    let (inbound, continuation) = AsyncThrowingStream.makeStream(of: ByteBuffer.self)
    let bootstrap = ClientBootstrap(group: loop)
      .channelOption(.allowRemoteHalfClosure, value: false)
      // READ replies are up to 32 MiB: read the socket in pieces of up to
      // 1 MiB rather than swift-nio's default 64 KiB.
      .channelOption(
        .recvAllocator,
        value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 65536, maximum: 1 << 20)
      )
      .channelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try NBDClientChannel.addInboundHandler(to: channel, feeding: continuation)
        }
      }
    let connected: EventLoopFuture<any Channel>
    switch address {
    case .unix(let path):
      connected = bootstrap.connect(unixDomainSocketPath: path)
    case .inet(let host, let port):
      guard let number = Int(port), (0...65535).contains(number) else {
        return loop.makeFailedFuture(
          BlockError(
            .invalidArgument,
            "address resolution failed for \(host):\(port): Servname not supported for ai_socktype")
        )
      }
      connected = bootstrap.channelOption(.tcpOption(.tcp_nodelay), value: 1)
        .connect(host: host, port: number)
    case .fd(let text):
      // QEMU's socket_get_fd without a monitor: a number, a socket; the
      // channel then owns (and in the end closes) the descriptor.
      guard let descriptor = Int32(text) else {
        return loop.makeFailedFuture(
          BlockError(.invalidArgument, "Unable to parse FD number \(text)"))
      }
      var status = stat()
      guard fstat(descriptor, &status) == 0, status.st_mode & S_IFMT == S_IFSOCK else {
        return loop.makeFailedFuture(
          BlockError(.invalidArgument, "File descriptor '\(text)' is not a socket"))
      }
      return bootstrap.withConnectedSocket(descriptor).map {
        NBDClientChannel(channel: $0, inbound: inbound)
      }
    }
    return connected.map { NBDClientChannel(channel: $0, inbound: inbound) }
      .flatMapErrorThrowing { error in
        throw BlockError(
          .connectionRefused, "Failed to connect to '\(address)': \(describe(error, address))")
      }
  }

  /// The system's text for a socket error during the handshake.
  nonisolated static func socketErrorText(_ error: any Error) -> String {
    switch error {
    case let error as IOError: return Errno.describe(Errno(rawValue: error.errnoCode))
    // The connection was closed under the request: the server hung up (a
    // TLS server that refuses the client after the handshake does so).
    case ChannelError.ioOnClosedChannel, ChannelError.eof: return "Connection closed by the server"
    case is NIOSSLError: return "Cannot read from TLS channel: \(NBDTLSUpgrade.describe(error))"
    default: return "\(error)"
    }
  }

  /// The system's text for a connection failure.
  private nonisolated static func describe(_ error: any Error, _ address: NBDServerAddress)
    -> String
  {
    if let error = error as? IOError { return Errno.describe(Errno(rawValue: error.errnoCode)) }
    if let error = error as? NIOConnectionError {
      if let first = error.connectionErrors.first?.error as? IOError {
        return Errno.describe(Errno(rawValue: first.errnoCode))
      }
      if error.connectionErrors.isEmpty {
        return "Name or service not known"
      }
    }
    return "\(error)"
  }

  /// Reads replies until the connection ends (from `leftover`, what came
  /// after the handshake, on), then closes the socket.
  private func readReplies(after leftover: ByteBuffer) async {
    var reader = NBDInboundReader(socket.inbound, unread: leftover)
    await receiveReplies(&reader)
    socket.close()
    readerDidEnd()
  }

  // MARK: Requests

  /// Sends a request and waits for its whole reply. A READ's data lands in
  /// `into` (`length` bytes); a BLOCK_STATUS answer is returned. A WRITE
  /// sends `payload`. `length` is 32 bits unless extended headers were
  /// negotiated (then a WRITE is sent with NBD_CMD_FLAG_PAYLOAD_LEN, as
  /// they require). Errors from the server are thrown as ``BlockError``
  /// with the errno it sent; a broken connection throws ``NBDConnectionLost``.
  func request(
    _ command: NBDCommand, flags: NBDCommandFlags = [], offset: UInt64, length: UInt64,
    payload: IOVector? = nil, into destination: IOVector? = nil
  ) async throws -> NBDBlockStatusExtent? {
    guard !broken, !closing else { throw NBDConnectionLost() }
    let extended = export.extendedHeaders
    precondition(extended || length <= UInt64(UInt32.max), "a compact request is 32-bit")
    let cookie = nextCookie
    nextCookie += 1
    var flags = flags
    if extended && payload != nil { flags.insert(.payloadLength) }
    let header = NBDRequest(
      magic: extended ? NBDProtocol.extendedRequestMagic : NBDProtocol.requestMagic,
      flags: flags, type: command.rawValue, cookie: cookie, offset: offset, length: length)
    var buffer = ByteBuffer()
    buffer.reserveCapacity(NBDRequest.size(extended: extended) + (payload?.count ?? 0))
    header.encode(into: &buffer, extended: extended)
    if let payload {
      buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: payload.count) { space in
        payload.copyOut(to: UnsafeMutableRawBufferPointer(rebasing: space[..<payload.count]))
        return payload.count
      }
    }
    let entry = NBDPendingRequest(
      command: command, offset: offset, length: length, destination: destination,
      contextID: export.contextID)
    pending[cookie] = entry
    do {
      try await socket.write(buffer)
    } catch {
      if pending.removeValue(forKey: cookie) != nil { fail() }
      throw NBDConnectionLost()
    }
    return try await entry.outcome()
  }

  /// Sends DISC, half-closes, and waits until the server has closed its end
  /// (so a process that exits next does not cut the message off); a server
  /// that has not hung up after ``closeGracePeriod`` is cut off.
  func close() async {
    guard !closing else { return }
    closing = true
    if !broken {
      var buffer = ByteBuffer()
      let extended = export.extendedHeaders
      NBDRequest(
        magic: extended ? NBDProtocol.extendedRequestMagic : NBDProtocol.requestMagic,
        type: NBDCommand.disconnect.rawValue, cookie: 0, offset: 0, length: 0
      )
      .encode(into: &buffer, extended: extended)
      try? await socket.write(buffer)
    }
    socket.finishWriting()
    if readerEnded { return }
    let socket = socket
    let cutOff = Task.detached {
      try await Task.sleep(for: Self.closeGracePeriod)
      socket.close()
    }
    await withCheckedContinuation { finished.append($0) }
    cutOff.cancel()
  }

  private func readerDidEnd() {
    readerEnded = true
    fail()
    for waiter in finished { waiter.resume() }
    finished = []
  }

  /// Fails every request in flight (the connection is unusable).
  private func fail() {
    broken = true
    let failed = pending.values
    pending = [:]
    for entry in failed { entry.finish(.failure(NBDConnectionLost())) }
  }

  // MARK: Replies

  /// Copies `count` bytes of READ data from the connection into `entry`'s
  /// buffer at `position`, piece by piece; false when the peer closed first.
  private func receiveData(
    _ reader: inout NBDInboundReader, _ entry: NBDPendingRequest, at position: UInt64,
    _ count: Int
  ) async throws -> Bool {
    var done: UInt64 = 0
    return try await reader.forEachPiece(count) { piece in
      entry.receiveData(at: position + done, piece)
      done += UInt64(piece.readableBytes)
    }
  }

  /// Reads replies until the server closes or breaks the protocol: with
  /// extended headers only extended chunks (echoing the request's offset),
  /// else simple replies and (once negotiated) structured chunks.
  private func receiveReplies(_ reader: inout NBDInboundReader) async {
    let extended = export.extendedHeaders
    do {
      replies: while let magicBytes = try await reader.read(4) {
        var magicBuffer = magicBytes
        let magic = magicBuffer.readInteger(as: UInt32.self)!
        guard (magic == NBDProtocol.extendedReplyMagic) == extended,
          let remainder = NBDReplyHeader.remainder(after: magic),
          var rest = try await reader.read(remainder),
          let header = NBDReplyHeader.decode(magic: magic, &rest),
          let entry = pending[header.cookie]
        else { break replies }
        let chunk: (flags: UInt16, type: UInt16, length: UInt64)
        switch header {
        case .simple(let error, let cookie):
          if error == 0, entry.command == .read {
            guard try await receiveData(&reader, entry, at: entry.offset, Int(entry.length))
            else { break replies }
          }
          pending[cookie] = nil
          entry.finish(error == 0 ? .success(nil) : .failure(NBDError.blockError(wire: error)))
          continue replies
        case .chunk(let flags, let type, _, let length):
          guard export.structuredReplies else { break replies }
          chunk = (flags, type, UInt64(length))
        case .extended(let flags, let type, _, let offset, let length):
          guard offset == entry.offset else { break replies }
          chunk = (flags, type, length)
        }
        guard chunk.length <= UInt64(NBDProtocol.maxBufferSize + 64) else { break replies }
        let length = Int(chunk.length)
        if chunk.type == NBDChunkType.offsetData.rawValue {
          // Data goes straight from the socket's buffers to the request's.
          guard length >= 8, var offsetBytes = try await reader.read(8),
            let position = offsetBytes.readInteger(as: UInt64.self),
            entry.acceptsData(at: position, count: UInt64(length - 8)),
            try await receiveData(&reader, entry, at: position, length - 8)
          else { break replies }
        } else {
          guard let payload = try await reader.read(length),
            entry.receiveChunk(type: chunk.type, payload, extended: extended)
          else { break replies }
        }
        if chunk.flags & NBDReplyHeader.doneFlag != 0 {
          pending[header.cookie] = nil
          entry.finish(entry.result)
        }
      }
    } catch {
      // The connection broke: every request in flight fails below.
    }
    fail()
  }
}
