import BlockCore
import NIOCore

/// One client of an export: the handshake, then requests handed to the engine
/// on `@BlockActor`, up to `maxRequests` at once and at most `payloadBudget`
/// bytes of READ and WRITE data, each
/// answered as soon as it completes (replies may come out of order).
@BlockActor
final class NBDConnection {
  private let backend: BlockBackend
  private let export: NBDExportInfo
  private let report: @BlockActor (String) -> Void
  private let handshakeLimit: Duration?
  private let extendedHeaders: Bool
  /// TLS, when the server has credentials (clients must STARTTLS first).
  private let tls: NBDServerTLS?
  /// The most requests in flight at once.
  private let maxRequests: Int
  /// The most READ and WRITE data bytes in flight at once.
  private let payloadBudget: Int
  /// The dirty bitmaps behind `export.bitmaps`, in the same order.
  private let bitmaps: [DirtyBitmap]

  init(
    backend: BlockBackend, export: NBDExportInfo, bitmaps: [DirtyBitmap],
    handshakeLimit: Duration?, extendedHeaders: Bool = true, tls: NBDServerTLS? = nil,
    maxRequests: Int = NBDProtocol.defaultServerRequestsInFlight,
    payloadBudget: Int = NBDProtocol.payloadBytesInFlight,
    report: @escaping @BlockActor (String) -> Void
  ) {
    self.maxRequests = max(1, maxRequests)
    self.payloadBudget = payloadBudget
    self.tls = tls
    self.backend = backend
    self.export = export
    self.bitmaps = bitmaps
    self.handshakeLimit = handshakeLimit
    self.extendedHeaders = extendedHeaders
    self.report = report
  }

  /// Serves the client until it leaves or breaks the protocol; `negotiated`
  /// is called once it reaches transmission. Closes the channel.
  func serve(
    _ channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>, negotiated: @BlockActor () -> Void
  ) async {
    // The handshake time limit: the connection is cut when it expires
    // before transmission; reading then ends and the client is dropped.
    let limiter = handshakeLimit.map { limit in
      Task { [channel = channel.channel] in
        try await Task.sleep(for: limit)
        channel.close(promise: nil)
      }
    }
    defer { limiter?.cancel() }
    do {
      try await channel.executeThenClose { inbound, outbound in
        var reader = NBDInboundReader(inbound)
        try await outbound.write(NBDEncoding.greeting())
        guard let negotiator = try await negotiate(&reader, outbound, channel.channel) else {
          return
        }
        limiter?.cancel()
        negotiated()
        try await transmit(&reader, outbound, negotiator)
      }
    } catch {
      // The peer went away mid-message; nothing to answer.
    }
  }

  /// The option phase; the negotiator once transmission starts, nil when the
  /// client leaves or is dropped.
  private func negotiate(
    _ reader: inout NBDInboundReader, _ outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
    _ channel: any Channel
  ) async throws -> NBDNegotiator? {
    var negotiator = NBDNegotiator(
      export: export, offersExtendedHeaders: extendedHeaders, requiresTLS: tls != nil)
    guard var flags = try await reader.read(4) else { return nil }
    if let problem = negotiator.receiveClientFlags(flags.readInteger(as: UInt32.self)!) {
      report("option negotiation failed: \(problem)")
      return nil
    }
    while true {
      guard var bytes = try await reader.read(NBDOptionHeader.size) else { return nil }
      let header = NBDOptionHeader.decode(&bytes)!
      if let problem = header.fatalProblem {
        report("option negotiation failed: \(problem)")
        return nil
      }
      guard let payload = try await reader.read(Int(header.length)) else { return nil }
      switch negotiator.handle(option: header.option, payload: payload) {
      case .reply(let reply):
        try await outbound.write(reply)
      case .replyAndClose(let reply):
        try? await outbound.write(reply)
        return nil
      case .transmission(let reply):
        try await outbound.write(reply)
        return negotiator
      case .disconnect(let reason):
        report("option negotiation failed: \(reason)")
        return nil
      case .startTLS(let acknowledgement):
        if let refusal = await startTLS(acknowledgement, channel, reader: reader) {
          report("option negotiation failed: \(refusal)")
          return nil
        }
        negotiator.tlsStarted()
      }
    }
  }

  /// Acknowledges STARTTLS, runs the server's side of the TLS handshake and
  /// checks the client against `--tls-authz`; why the client is dropped,
  /// or nil to go on with options over TLS.
  private func startTLS(
    _ acknowledgement: ByteBuffer, _ channel: any Channel, reader: NBDInboundReader
  ) async -> String? {
    guard let tls else { return "TLS not configured" }
    // Bytes sent after STARTTLS but before its answer were sent in the
    // clear: no TLS client does that (and they must not pass for TLS data).
    let consumed = reader.received - reader.unread.readableBytes
    guard reader.unread.readableBytes == 0 else {
      return "Unexpected data before the TLS handshake"
    }
    do {
      let certificate = try await NBDTLSUpgrade.start(
        on: channel, sending: acknowledgement, consumed: consumed, role: .server(tls.context))
      return tls.refusal(of: certificate)
    } catch let error as NBDTLSUpgrade.PlainTextAfterStartTLS {
      return "Unexpected data before the TLS handshake (\(error))"
    } catch let error where NBDTLSUpgrade.isMissingPeerCertificate(error) {
      return "Verify failed: No certificate was found."
    } catch {
      return "TLS handshake failed: \(NBDTLSUpgrade.describe(error))"
    }
  }

  /// qemu-nbd's message for a client that left in the middle of a request.
  private func reportEndOfFile() {
    report("Disconnect client, due to: Unexpected end-of-file before all bytes were read")
  }

  /// Handles one request and writes its whole reply at once (replies of
  /// requests in flight never interleave).
  private static func answer(
    _ request: NBDRequest, payload: ByteBuffer?, contexts: Set<UInt32>?,
    _ handler: NBDRequestHandler, _ outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
  ) async {
    let reply = await handler.handle(request, payload: payload, contexts: contexts)
    try? await outbound.write(reply)
  }

  /// The job of one request's child task, isolated to ``BlockActor`` so
  /// that the task starts there rather than hopping through Swift's shared
  /// pool on its way to the engine; it returns `cost`, the data bytes it
  /// held.
  private nonisolated static func answering(
    _ request: NBDRequest, payload: ByteBuffer?, contexts: Set<UInt32>?, cost: Int,
    _ handler: NBDRequestHandler, _ outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
  ) -> @Sendable @BlockActor () async -> Int {
    {
      await answer(request, payload: payload, contexts: contexts, handler, outbound)
      return cost
    }
  }

  /// The data bytes a request holds while in flight: its payload (WRITE)
  /// or its reply's data (READ).
  private static func cost(of request: NBDRequest) -> Int {
    switch NBDCommand(rawValue: request.type) {
    case .read, .write: Int(clamping: request.length)
    default: 0
    }
  }

  /// The transmission phase: reads requests until DISC, end of file or a
  /// fatal error; waits for the replies of every request in flight.
  private func transmit(
    _ reader: inout NBDInboundReader, _ outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
    _ negotiator: NBDNegotiator
  ) async throws {
    let mode = negotiator.mode
    let handler = NBDRequestHandler(
      backend: backend, size: export.size, mode: mode,
      baseAllocation: negotiator.baseAllocation, allocationDepth: negotiator.allocationDepth,
      bitmaps: negotiator.selectedBitmaps.map {
        (NBDProtocol.firstDirtyBitmapID + UInt32($0), bitmaps[$0])
      })
    let negotiatedContexts = handler.negotiatedContexts
    let headerSize = NBDRequest.size(extended: mode == .extended)
    await withTaskGroup(of: Int.self) { group in
      var inFlight = 0
      var bytesInFlight = 0
      do {
        while true {
          guard var bytes = try await reader.read(headerSize) else {
            if reader.endedMidMessage { reportEndOfFile() }
            break
          }
          var request = NBDRequest.decode(&bytes, extended: mode == .extended)!
          var check = NBDRequestValidation.check(
            request, exportSize: export.size, readOnly: export.readOnly, mode: mode)
          var payload: ByteBuffer?
          var contexts: Set<UInt32>?
          if case .readBlockStatusPayload = check {
            // The payload names the contexts and the effect length; an
            // invalid one fails the request (EINVAL) but not the connection.
            guard let bytes = try await reader.read(Int(request.length)) else {
              reportEndOfFile()
              return
            }
            let parsed = NBDBlockStatusPayload.parse(bytes, negotiated: negotiatedContexts)
            request.length = parsed?.effectLength ?? 0
            contexts = parsed?.contextIDs ?? []
            check = NBDRequestValidation.check(
              request, exportSize: export.size, readOnly: export.readOnly, mode: mode,
              payloadConsumed: true)
          }
          switch check {
          case .disconnect:
            return
          case .readBlockStatusPayload:
            preconditionFailure("a BLOCK_STATUS payload is read once")
          case .reject(let error, let message, let payloadFollows, let fatal):
            if payloadFollows, try await !reader.skip(Int(request.length)) {
              reportEndOfFile()
              return
            }
            let reply = handler.errorReply(request, error: error, message: message)
            try await outbound.write(reply)
            if fatal {
              report("Disconnect client, due to: Request handling failed in intermediate state")
              return
            }
            continue
          case .valid(.write):
            guard let data = try await reader.read(Int(request.length)) else {
              reportEndOfFile()
              return
            }
            payload = data
          case .valid:
            break
          }
          // Wait for room: a request slot, and data bytes (one request
          // alone may always run).
          let cost = Self.cost(of: request)
          while inFlight >= maxRequests
            || (inFlight > 0 && bytesInFlight + cost > payloadBudget)
          {
            bytesInFlight -= await group.next() ?? 0
            inFlight -= 1
          }
          inFlight += 1
          bytesInFlight += cost
          group.addTask(
            operation: Self.answering(
              request, payload: payload, contexts: contexts, cost: cost, handler, outbound))
        }
      } catch {
        // The peer closed mid-request: answer nothing more.
      }
    }
  }
}
