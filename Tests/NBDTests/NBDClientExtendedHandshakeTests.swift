import BlockCore
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import NBD

#if canImport(Glibc)
  import Glibc
#endif

/// The client's handshake with extended headers: which options it sends, in
/// which order, against servers that take them, refuse them as qemu-nbd 7.2
/// does (UNSUP), or take them and then break the spec; each server a
/// scripted peer on a socket pair, answering with Spindle's own negotiator.
struct NBDClientExtendedHandshakeTests {
  /// A server end that answers options with an ``NBDNegotiator`` (or, for
  /// the options `override` answers, with its bytes) until transmission,
  /// recording the option numbers, on a thread of its own.
  final class ScriptedServer: Sendable {
    let options = Mutex<[UInt32]>([])
    private let fd: Int32

    init(
      fd: Int32, offersExtendedHeaders: Bool,
      override: @escaping @Sendable (UInt32) -> ByteBuffer? = { _ in nil }
    ) {
      self.fd = fd
      let thread = Thread { [self] in
        Self.serve(fd, offersExtendedHeaders, override, self)
      }
      thread.start()
    }

    private static func readExactly(_ fd: Int32, _ count: Int) -> [UInt8]? {
      var bytes = [UInt8](repeating: 0, count: count)
      var done = 0
      while done < count {
        let got = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, count - done) }
        guard got > 0 else { return nil }
        done += got
      }
      return bytes
    }

    private static func send(_ fd: Int32, _ buffer: ByteBuffer) {
      let bytes = Array(buffer: buffer)
      _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress!, bytes.count) }
    }

    private static func serve(
      _ fd: Int32, _ offersExtendedHeaders: Bool,
      _ override: @Sendable (UInt32) -> ByteBuffer?, _ server: ScriptedServer
    ) {
      var negotiator = NBDNegotiator(
        export: NBDExportInfo(size: 1 << 20), offersExtendedHeaders: offersExtendedHeaders)
      send(fd, NBDEncoding.greeting())
      guard let flags = readExactly(fd, 4) else { return }
      _ = negotiator.receiveClientFlags(
        UInt32(flags[0]) << 24 | UInt32(flags[1]) << 16 | UInt32(flags[2]) << 8 | UInt32(flags[3]))
      while let header = readExactly(fd, 16) {
        var buffer = ByteBuffer(bytes: header)
        let decoded = NBDOptionHeader.decode(&buffer)!
        guard let payload = readExactly(fd, Int(decoded.length)) else { return }
        server.options.withLock { $0.append(decoded.option) }
        if let answer = override(decoded.option) {
          send(fd, answer)
          continue
        }
        switch negotiator.handle(option: decoded.option, payload: ByteBuffer(bytes: payload)) {
        case .reply(let bytes): send(fd, bytes)
        case .replyAndClose(let bytes), .transmission(let bytes):
          send(fd, bytes)
          return
        case .disconnect, .startTLS: return
        }
      }
    }

    deinit { close(fd) }
  }

  /// Runs the client's handshake against `server` (built on the other end
  /// of a fresh socket pair); the options it sent and its result.
  func handshake(
    extendedHeaders: Bool = true, server: (Int32) -> ScriptedServer
  ) async throws -> (options: [UInt32], result: Result<NBDNegotiatedExport, any Error>) {
    var ends: [Int32] = [-1, -1]
    try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
    let peer = server(ends[1])
    let socket = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .withConnectedSocket(ends[0]) { channel in
        channel.eventLoop.makeCompletedFuture {
          let (inbound, continuation) = AsyncThrowingStream.makeStream(of: ByteBuffer.self)
          try NBDClientChannel.addInboundHandler(to: channel, feeding: continuation)
          return NBDClientChannel(channel: channel, inbound: inbound)
        }
      }
    defer { socket.close() }
    let handshake = NBDClientHandshake(
      export: "", context: NBDProtocol.baseAllocation, extendedHeaders: extendedHeaders)
    let result: Result<NBDNegotiatedExport, any Error>
    do {
      result = .success(
        try await NBDClientNegotiation(on: socket.channel.eventLoop).run(handshake, over: socket)
          .export)
    } catch {
      result = .failure(error)
    }
    return (peer.options.withLock { $0 }, result)
  }

  @Test func extendedHeadersComeFirstAndReplaceStructuredReplies() async throws {
    let (options, result) = try await handshake {
      ScriptedServer(fd: $0, offersExtendedHeaders: true)
    }
    #expect(options == [11, 10, 7])
    let export = try result.get()
    #expect(export.extendedHeaders)
    #expect(export.structuredReplies)
    #expect(export.contextID == NBDProtocol.baseAllocationID)
    #expect(export.flags.contains(.blockStatusPayload))
  }

  @Test func unsupportedFallsBackToStructuredReplies() async throws {
    // qemu-nbd 7.2 answers option 11 with UNSUP.
    let (options, result) = try await handshake {
      ScriptedServer(fd: $0, offersExtendedHeaders: false)
    }
    #expect(options == [11, 8, 10, 7])
    let export = try result.get()
    #expect(!export.extendedHeaders)
    #expect(export.structuredReplies)
    #expect(export.contextID == NBDProtocol.baseAllocationID)
    #expect(!export.flags.contains(.blockStatusPayload))
  }

  @Test func switchedOffTheClientNegotiatesAsQEMU72() async throws {
    let (options, result) = try await handshake(extendedHeaders: false) {
      ScriptedServer(fd: $0, offersExtendedHeaders: true)
    }
    #expect(options == [8, 10, 7])
    #expect(try !result.get().extendedHeaders)
  }

  @Test func goRefusedAfterExtendedHeadersFailsWithoutExportName() async throws {
    // A broken server: extended headers, then UNSUP for GO. The client
    // must not fall back to EXPORT_NAME (forbidden after extended headers).
    let (options, result) = try await handshake {
      ScriptedServer(fd: $0, offersExtendedHeaders: true) { option in
        guard option == NBDOption.go.rawValue else { return nil }
        var out = ByteBuffer()
        NBDEncoding.optionError(&out, option: option, type: .unsupported, message: "no GO")
        return out
      }
    }
    // The refusal ends with ABORT, as QEMU's nbd_send_opt_abort.
    #expect(options == [11, 10, 7, 2])
    #expect(throws: BlockError(.invalidArgument, "Server does not support NBD_OPT_GO")) {
      try result.get()
    }
  }

  @Test func anErrorOtherThanUnsupportedFailsTheHandshake() async throws {
    let (options, result) = try await handshake {
      ScriptedServer(fd: $0, offersExtendedHeaders: true) { option in
        guard option == NBDOption.extendedHeaders.rawValue else { return nil }
        var out = ByteBuffer()
        NBDEncoding.optionError(&out, option: option, type: .policy, message: "not today")
        return out
      }
    }
    #expect(options == [11, 2])
    #expect(
      throws: BlockError(
        .invalidArgument,
        "Denied by server for option 11 (extended headers)\nserver reported: not today")
    ) {
      try result.get()
    }
  }
}
