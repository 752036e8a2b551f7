import BlockCore
import Foundation
import NIOCore
import Testing

@testable import NBD

#if canImport(Glibc)
  import Glibc
#endif

/// How the client's connection reads extended replies: a scripted server
/// (Spindle's negotiator for the handshake, then one hand-made reply to the
/// one request) on a Unix socket; well-formed replies are taken, anything
/// the spec forbids breaks the connection (the request fails, as QEMU's
/// client does).
@BlockActor
struct NBDClientExtendedRepliesTests {
  /// Listens on a Unix socket in a fresh folder, serves one client on a
  /// thread of its own: the handshake with extended headers and
  /// `base:allocation`, then `reply` to the first request's header.
  final class OneReplyServer: Sendable {
    let path: String
    private let listener: Int32

    init(reply: @escaping @Sendable (_ cookie: UInt64, _ offset: UInt64) -> [UInt8]) throws {
      let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
        "nbdreply-\(UUID().uuidString)")
      try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
      path = directory.appendingPathComponent("s.sock").path
      let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
      listener = fd
      var address = sockaddr_un()
      address.sun_family = sa_family_t(AF_UNIX)
      let bytes = Array(path.utf8)
      withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
      }
      let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
      }
      guard bound == 0, listen(fd, 1) == 0 else { throw POSIXError(.EADDRINUSE) }
      Thread { Self.serve(fd, reply) }.start()
    }

    deinit {
      // Wakes a thread still waiting in accept (no client came).
      shutdown(listener, Int32(SHUT_RDWR))
      close(listener)
      try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent)
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

    private static func send(_ fd: Int32, _ bytes: [UInt8]) {
      _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress!, bytes.count) }
    }

    private static func serve(
      _ listener: Int32, _ reply: @Sendable (UInt64, UInt64) -> [UInt8]
    ) {
      let fd = accept(listener, nil, nil)
      guard fd >= 0 else { return }
      defer { close(fd) }
      var negotiator = NBDNegotiator(export: NBDExportInfo(size: 8 << 30))
      send(fd, Array(buffer: NBDEncoding.greeting()))
      guard readExactly(fd, 4) != nil, negotiator.receiveClientFlags(3) == nil else { return }
      negotiation: while let header = readExactly(fd, 16) {
        var buffer = ByteBuffer(bytes: header)
        let option = NBDOptionHeader.decode(&buffer)!
        guard let payload = readExactly(fd, Int(option.length)) else { return }
        switch negotiator.handle(option: option.option, payload: ByteBuffer(bytes: payload)) {
        case .reply(let bytes): send(fd, Array(buffer: bytes))
        case .transmission(let bytes):
          send(fd, Array(buffer: bytes))
          break negotiation
        case .replyAndClose, .disconnect, .startTLS: return
        }
      }
      guard var request = readExactly(fd, 32).map({ ByteBuffer(bytes: $0) }),
        let header = NBDRequest.decode(&request, extended: true)
      else { return }
      send(fd, reply(header.cookie, header.offset))
      // Wait for the client to hang up (DISC, or its close).
      while readExactly(fd, 1) != nil {}
    }
  }

  /// An extended chunk header.
  nonisolated static func chunk(
    magic: UInt32 = NBDProtocol.extendedReplyMagic, flags: UInt16 = 1, type: NBDChunkType,
    cookie: UInt64, offset: UInt64, payload: [UInt8]
  ) -> [UInt8] {
    var buffer = ByteBuffer()
    buffer.writeInteger(magic)
    buffer.writeInteger(flags)
    buffer.writeInteger(type.rawValue)
    buffer.writeInteger(cookie)
    buffer.writeInteger(offset)
    buffer.writeInteger(UInt64(payload.count))
    return Array(buffer: buffer) + payload
  }

  /// A BLOCK_STATUS_EXT payload for context 0.
  nonisolated static func extents(count: UInt32? = nil, _ extents: [(UInt64, UInt64)]) -> [UInt8] {
    var buffer = ByteBuffer()
    buffer.writeInteger(NBDProtocol.baseAllocationID)
    buffer.writeInteger(count ?? UInt32(extents.count))
    for (length, flags) in extents {
      buffer.writeInteger(length)
      buffer.writeInteger(flags)
    }
    return Array(buffer: buffer)
  }

  /// A BLOCK_STATUS at 4 KiB over 6 GiB answered by `reply`: its extent, or
  /// the error.
  func blockStatus(_ reply: @escaping @Sendable (UInt64, UInt64) -> [UInt8]) async throws
    -> Result<NBDBlockStatusExtent?, any Error>
  {
    let server = try OneReplyServer(reply: reply)
    let connection = try await NBDClientConnection.open(
      to: .unix(path: server.path),
      handshake: NBDClientHandshake(export: "", context: NBDProtocol.baseAllocation))
    #expect(connection.export.extendedHeaders)
    let result: Result<NBDBlockStatusExtent?, any Error>
    do {
      result = .success(
        try await connection.request(.blockStatus, flags: .reqOne, offset: 4096, length: 6 << 30))
    } catch {
      result = .failure(error)
    }
    await connection.close()
    return result
  }

  @Test func a64BitExtentIsTaken() async throws {
    let result = try await blockStatus { cookie, offset in
      Self.chunk(
        type: .blockStatusExtended, cookie: cookie, offset: offset,
        payload: Self.extents([(5 << 30, 3), (1 << 30, 0)]))
    }
    #expect(try result.get() == NBDBlockStatusExtent(length: 5 << 30, flags: 3))
  }

  @Test func aCompactStatusChunkIsTakenToo() async throws {
    // The spec lets a server answer with either chunk type.
    let result = try await blockStatus { cookie, offset in
      Self.chunk(
        type: .blockStatus, cookie: cookie, offset: offset,
        payload: [0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 1])
    }
    #expect(try result.get() == NBDBlockStatusExtent(length: 4096, flags: 1))
  }

  @Test func anExtentLongerThanTheRequestIsClipped() async throws {
    let result = try await blockStatus { cookie, offset in
      Self.chunk(
        type: .blockStatusExtended, cookie: cookie, offset: offset,
        payload: Self.extents([(8 << 30, 0)]))
    }
    #expect(try result.get() == NBDBlockStatusExtent(length: 6 << 30, flags: 0))
  }

  @Test(arguments: [
    "wrong offset", "structured magic", "simple reply", "descriptor count", "64-bit flags",
    "zero length", "ragged payload",
  ])
  func violationsBreakTheConnection(_ violation: String) async throws {
    let result = try await blockStatus { cookie, offset in
      switch violation {
      case "wrong offset":
        return Self.chunk(
          type: .blockStatusExtended, cookie: cookie, offset: offset + 512,
          payload: Self.extents([(4096, 0)]))
      case "structured magic":
        var buffer = ByteBuffer()
        NBDEncoding.blockStatus(
          &buffer, done: true, cookie: cookie, contextID: 0, extents: [(4096, 0)])
        return Array(buffer: buffer)
      case "simple reply":
        var buffer = ByteBuffer()
        NBDEncoding.simpleReply(&buffer, error: 0, cookie: cookie)
        return Array(buffer: buffer)
      case "descriptor count":
        return Self.chunk(
          type: .blockStatusExtended, cookie: cookie, offset: offset,
          payload: Self.extents(count: 2, [(4096, 0)]))
      case "64-bit flags":
        return Self.chunk(
          type: .blockStatusExtended, cookie: cookie, offset: offset,
          payload: Self.extents([(4096, 1 << 32)]))
      case "zero length":
        return Self.chunk(
          type: .blockStatusExtended, cookie: cookie, offset: offset,
          payload: Self.extents([(0, 0)]))
      default:
        return Self.chunk(
          type: .blockStatusExtended, cookie: cookie, offset: offset,
          payload: Self.extents([(4096, 0)]) + [0, 0, 0, 0])
      }
    }
    #expect(throws: NBDConnectionLost.self) { try result.get() }
  }
}
