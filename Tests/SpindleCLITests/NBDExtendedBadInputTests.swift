import BlockTestSupport
import Foundation
import Testing

/// Malformed and illegal input with extended headers, from raw sockets, to
/// `spindle serve -o 4096` (no installed peer has extended headers, so the
/// answers are the spec's and QEMU 8.2+'s): each request gets its error and
/// the connection goes on, or is dropped where the next header cannot be
/// found; the server still serves the next client; no byte outside the
/// export (the 4096 bytes before it, anything past the file's end) changes.
@Suite(
  .requires("qemu-img", "nbdinfo"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct NBDExtendedBadInputTests {
  typealias Bad = NBDBadInputTests

  static let exportSize: UInt64 = 1 << 20
  static let guardByte: UInt8 = 0x5a

  /// An extended request header (32 bytes), then `payload`.
  static func request(
    type: UInt16, flags: UInt16 = 0, cookie: UInt64, offset: UInt64, length: UInt64,
    payload: [UInt8] = [], magic: UInt32 = 0x21e4_1c71
  ) -> [UInt8] {
    .be(magic) + .be(flags) + .be(type) + .be(cookie) + .be(offset) + .be(length) + payload
  }

  /// Greeting, flags, EXTENDED_HEADERS, SET_META_CONTEXT base:allocation and
  /// GO, as option reply lines.
  static func negotiate(_ path: String) async throws -> (NBDSocket, [String]) {
    let socket = try await Bad.handshake(path)
    var lines: [String] = []
    socket.send(Bad.option(11, []))
    lines += await Bad.optionReplies(socket)
    let context = Array("base:allocation".utf8)
    socket.send(
      Bad.option(
        10, .be(UInt32(0)) + .be(UInt32(1)) + .be(UInt32(context.count)) + context))
    lines += await Bad.optionReplies(socket)
    socket.send(Bad.option(7, .be(UInt32(0)) + .be(UInt16(0))))
    let go = await Bad.optionReplies(socket)
    lines.append(go.last ?? "no reply")
    return (socket, lines)
  }

  /// One reply (extended chunks until DONE), as text; READ data is kept
  /// in `data`.
  static func reply(_ socket: NBDSocket, data: inout [UInt8]) async -> String {
    var parts: [String] = []
    while true {
      guard let header = await socket.receive(32) else {
        return (parts + ["closed"]).joined(separator: "; ")
      }
      let magic = header.be(UInt32.self, at: 0)
      let flags = header.be(UInt16.self, at: 4)
      let type = header.be(UInt16.self, at: 6)
      let cookie = header.be(UInt64.self, at: 8)
      let offset = header.be(UInt64.self, at: 16)
      let length = header.be(UInt64.self, at: 24)
      guard magic == 0x6e8a_278c, length <= 64 << 20,
        let payload = await socket.receive(Int(length))
      else {
        return (parts + ["bad chunk magic 0x\(String(magic, radix: 16))"]).joined(separator: "; ")
      }
      var text = "cookie \(cookie) offset \(offset) type \(type)"
      switch type {
      case 0x8001:
        let error = payload.be(UInt32.self, at: 0)
        text += " error \(error): \(String(decoding: payload[6...], as: UTF8.self))"
      case 1:
        text += " data at \(payload.be(UInt64.self, at: 0)) (\(payload.count - 8) bytes)"
        data += payload[8...]
      case 6:
        let id = payload.be(UInt32.self, at: 0)
        let count = payload.be(UInt32.self, at: 4)
        var extents: [String] = []
        for index in 0..<Int(count) {
          let base = 8 + 16 * index
          extents.append(
            "\(payload.be(UInt64.self, at: base))/\(payload.be(UInt64.self, at: base + 8))")
        }
        text += " context \(id): \(extents.joined(separator: " "))"
      default:
        text += " length \(length)"
      }
      parts.append(text)
      if flags & 1 != 0 { return parts.joined(separator: "; ") }
    }
  }

  static func reply(_ socket: NBDSocket) async -> String {
    var ignored: [UInt8] = []
    return await reply(socket, data: &ignored)
  }

  @Test func badInputWithExtendedHeaders() async throws {
    let fixture = try ImageFixture()
    let image = fixture.path("e.raw")
    // 4096 guard bytes, then the 1 MiB export (a hole).
    var original = Data(repeating: Self.guardByte, count: 4096)
    try original.write(to: URL(fileURLWithPath: image))
    let file = try FileHandle(forWritingTo: URL(fileURLWithPath: image))
    try file.truncate(atOffset: 4096 + Self.exportSize)
    try file.close()
    original.append(Data(count: Int(Self.exportSize)))
    let path = fixture.path("e.sock")
    let running = try await BackgroundNBDServer(
      .spindle, socket: path,
      options: ["--handshake-limit=0", "-t", "-f", "raw", "-o", "4096", image])
    let size = Self.exportSize
    let written = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 7) }
    var lines: [String] = []
    do {
      let (socket, negotiation) = try await Self.negotiate(path)
      lines += negotiation
      // A write with PAYLOAD_LEN.
      socket.send(
        Self.request(type: 1, flags: 0x20, cookie: 1, offset: 0, length: 4096, payload: written))
      lines.append(await Self.reply(socket))
      // 64-bit lengths past the end, and one that wraps around 2^64.
      socket.send(Self.request(type: 6, cookie: 2, offset: size - 4096, length: 1 << 63))
      lines.append(await Self.reply(socket))
      socket.send(Self.request(type: 4, cookie: 3, offset: 4096, length: UInt64.max))
      lines.append(await Self.reply(socket))
      socket.send(Self.request(type: 7, cookie: 4, offset: 0, length: 1 << 40))
      lines.append(await Self.reply(socket))
      // A write past the end: its payload is read and thrown away.
      socket.send(
        Self.request(
          type: 1, flags: 0x20, cookie: 5, offset: size - 256, length: 512,
          payload: [UInt8](repeating: 0xee, count: 512)))
      lines.append(await Self.reply(socket))
      // A read longer than 32 MiB, and a payload on TRIM (no payload form).
      socket.send(Self.request(type: 0, cookie: 6, offset: 0, length: 1 << 32))
      lines.append(await Self.reply(socket))
      socket.send(
        Self.request(
          type: 4, flags: 0x20, cookie: 7, offset: 0, length: 8,
          payload: [UInt8](repeating: 0xff, count: 8)))
      lines.append(await Self.reply(socket))
      // BLOCK_STATUS payloads: base:allocation (id 0) over 1 MiB, then an
      // id never negotiated.
      socket.send(
        Self.request(
          type: 7, flags: 0x20, cookie: 8, offset: 0, length: 12,
          payload: .be(UInt64(size)) + .be(UInt32(0))))
      lines.append(await Self.reply(socket))
      socket.send(
        Self.request(
          type: 7, flags: 0x20, cookie: 9, offset: 0, length: 12,
          payload: .be(UInt64(size)) + .be(UInt32(5))))
      lines.append(await Self.reply(socket))
      // The written data reads back (structured: data, then the hole).
      var data: [UInt8] = []
      socket.send(Self.request(type: 0, cookie: 10, offset: 0, length: 8192))
      lines.append(await Self.reply(socket, data: &data))
      lines.append("read back \(data == written)")
      // A compact header after extended headers: an error, then the end.
      socket.send(
        Bad.request(type: 0, cookie: 11, offset: 0, length: 512) + [0, 0, 0, 0])
      lines.append(await Self.reply(socket))
      lines.append("compact header: \(await Bad.isClosed(socket))")
    }
    do {
      // A WRITE payload over 32 MiB cannot be skipped.
      let (socket, _) = try await Self.negotiate(path)
      socket.send(Self.request(type: 1, flags: 0x20, cookie: 12, offset: 0, length: (32 << 20) + 1))
      lines.append(await Self.reply(socket))
      lines.append("oversized write: \(await Bad.isClosed(socket))")
    }
    do {
      // Nor can a BLOCK_STATUS payload of 1 TiB.
      let (socket, _) = try await Self.negotiate(path)
      socket.send(Self.request(type: 7, flags: 0x20, cookie: 13, offset: 0, length: 1 << 40))
      lines.append(await Self.reply(socket))
      lines.append("oversized status payload: \(await Bad.isClosed(socket))")
    }
    do {
      // A client that leaves in the middle of an extended header.
      let (socket, _) = try await Self.negotiate(path)
      socket.send(Array(Self.request(type: 1, cookie: 14, offset: 0, length: 4096).prefix(20)))
    }
    let next = try await runNBDClient("nbdinfo", ["--size", "nbd+unix:///?socket=\(path)"])
    lines.append("next client: \(next.status) \(next.output)")
    let termination = await running.terminate()
    lines.append("SIGTERM: \(termination.status)")
    let stderr = await running.errorOutput()

    let sizeText = "\(size)"
    let expected = [
      "1:", "4:0,0,0,0,98,97,115,101,58,97,108,108,111,99,97,116,105,111,110", "1:", "1:",
      "cookie 1 offset 0 type 0 length 0",
      "cookie 2 offset \(size - 4096) type 32769 error 22: operation past EOF; From: \(size - 4096), Len: \(UInt64(1) << 63), Size: \(sizeText)",
      "cookie 3 offset 4096 type 32769 error 22: operation past EOF; From: 4096, Len: \(UInt64.max), Size: \(sizeText)",
      "cookie 4 offset 0 type 32769 error 22: operation past EOF; From: 0, Len: 1099511627776, Size: \(sizeText)",
      "cookie 5 offset \(size - 256) type 32769 error 22: operation past EOF; From: \(size - 256), Len: 512, Size: \(sizeText)",
      "cookie 6 offset 0 type 32769 error 22: len (4294967296) is larger than max len (33554432)",
      "cookie 7 offset 0 type 32769 error 22: unsupported flags for command trim (got 0x20)",
      "cookie 8 offset 0 type 6 context 0: 4096/0 \(size - 4096)/3",
      "cookie 9 offset 0 type 32769 error 22: CMD_BLOCK_STATUS payload not valid",
      "cookie 10 offset 0 type 1 data at 0 (4096 bytes); cookie 10 offset 0 type 2 length 12",
      "read back true",
      "cookie 11 offset 0 type 32769 error 22: invalid magic (got 0x25609513, expected 0x21e41c71)",
      "compact header: closed",
      "cookie 12 offset 0 type 32769 error 22: len (33554433) is larger than max len (33554432)",
      "oversized write: closed",
      "cookie 13 offset 0 type 32769 error 22: len (1099511627776) is larger than max len (33554432)",
      "oversized status payload: closed",
      "next client: 0 \(sizeText)\n",
      "SIGTERM: 0",
    ]
    #expect(lines == expected)
    #expect(
      stderr.components(separatedBy: "Request handling failed in intermediate state").count - 1
        == 3, "\(stderr)")
    // Nothing outside the export changed: the guard bytes, the file's size;
    // inside it only the one write landed.
    let after = try Data(contentsOf: URL(fileURLWithPath: image))
    #expect(after.count == original.count)
    #expect(after.prefix(4096).allSatisfy { $0 == Self.guardByte })
    #expect(Array(after[4096..<8192]) == written)
    #expect(after.suffix(from: 8192).allSatisfy { $0 == 0 })
  }
}
