import BlockTestSupport
import Foundation
import Testing

/// Malformed and illegal input from a raw socket, sent to `spindle serve` and
/// to qemu-nbd 7.2 (both persistent, on a Unix socket): the same replies, the
/// same dropped connections, and each server still serves the next client.
@Suite(
  .requires("qemu-nbd", "nbdinfo"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct NBDBadInputTests {
  static let optionMagic: UInt64 = 0x4948_4156_454f_5054

  /// Connects, reads the greeting and sends the fixed-newstyle client flags.
  static func handshake(_ path: String) async throws -> NBDSocket {
    let socket = try NBDSocket(path: path)
    let greeting = try #require(await socket.receive(18))
    #expect(Array(greeting[0..<8]) == Array("NBDMAGIC".utf8))
    socket.send(.be(UInt32(3)))
    return socket
  }

  static func option(_ option: UInt32, _ payload: [UInt8], magic: UInt64 = optionMagic) -> [UInt8] {
    .be(magic) + .be(option) + .be(UInt32(payload.count)) + payload
  }

  static func request(
    type: UInt16, flags: UInt16 = 0, cookie: UInt64, offset: UInt64, length: UInt32
  ) -> [UInt8] {
    .be(UInt32(0x2560_9513)) + .be(flags) + .be(type) + .be(cookie) + .be(offset) + .be(length)
  }

  /// Option replies until ACK or an error, as "type:payload" lines (text
  /// payloads of errors as text).
  static func optionReplies(_ socket: NBDSocket) async -> [String] {
    var lines: [String] = []
    while let header = await socket.receive(20) {
      let type = header.be(UInt32.self, at: 12)
      let length = Int(header.be(UInt32.self, at: 16))
      guard let payload = await socket.receive(length) else { return lines + ["closed"] }
      let text =
        type >= 0x8000_0000
        ? String(decoding: payload, as: UTF8.self)
        : payload.map { String($0) }.joined(separator: ",")
      lines.append("\(String(type, radix: 16)):\(text)")
      if type == 1 || type >= 0x8000_0000 { return lines }
    }
    return lines + ["closed"]
  }

  /// One reply in transmission (structured chunks until DONE), as text.
  static func reply(_ socket: NBDSocket) async -> String {
    guard let header = await socket.receive(20) else { return "closed" }
    let type = header.be(UInt16.self, at: 6)
    let cookie = header.be(UInt64.self, at: 8)
    let length = Int(header.be(UInt32.self, at: 16))
    guard let payload = await socket.receive(length) else { return "closed" }
    if type == 0x8001 {
      let error = payload.be(UInt32.self, at: 0)
      let message = String(decoding: payload[6...], as: UTF8.self)
      return "cookie \(cookie) error \(error): \(message)"
    }
    return "cookie \(cookie) chunk \(type) length \(length)"
  }

  static func isClosed(_ socket: NBDSocket) async -> String {
    await socket.receive(1) == nil ? "closed" : "open"
  }

  /// Everything a misbehaving client sees, against `server`.
  /// Also how long the raw clients' conversations took: qemu-nbd 7.2
  /// (Debian's CVE-2024-7409 backport) drops a client still negotiating
  /// after 10 s, which only a very loaded machine reaches.
  static func transcript(_ server: NBDServer, fixture: ImageFixture) async throws -> (
    lines: [String], conversation: Duration
  ) {
    let image = try fixture.makeImage("\(server).raw")
    let path = fixture.path("\(server).sock")
    // No handshake time limit for Spindle: on a loaded machine this
    // transcript's round trips can outlast the default 10 s (qemu-nbd 7.2's
    // own limit, backported by Debian, cannot be changed).
    let limit = server == .spindle ? ["--handshake-limit=0"] : []
    let running = try await BackgroundNBDServer(
      server, socket: path, options: limit + ["-t", "-f", "raw", image])
    var lines: [String] = []
    let clock = ContinuousClock()
    let start = clock.now
    do {
      let socket = try await handshake(path)
      socket.send(option(7, [], magic: 0x1234))
      lines.append("bad option magic: \(await isClosed(socket))")
    }
    do {
      let socket = try await handshake(path)
      socket.send(.be(optionMagic) + .be(UInt32(7)) + .be(UInt32((32 << 20) + 1)))
      lines.append("oversized option: \(await isClosed(socket))")
    }
    do {
      let socket = try await handshake(path)
      socket.send(option(99, []))
      lines += await optionReplies(socket)
      socket.send(option(6, .be(UInt32(5)) + Array("nope!".utf8) + .be(UInt16(0))))
      lines += await optionReplies(socket)
      socket.send(
        option(7, .be(UInt32(4097)) + [UInt8](repeating: 0x61, count: 4097) + .be(UInt16(0))))
      lines += await optionReplies(socket)
      socket.send(option(8, []))
      lines += await optionReplies(socket)
      socket.send(option(7, .be(UInt32(0)) + .be(UInt16(1)) + .be(UInt16(3))))
      lines += await optionReplies(socket)
      let size: UInt64 = 1 << 20
      socket.send(request(type: 0, cookie: 1, offset: size, length: 512))
      lines.append(await reply(socket))
      socket.send(
        request(type: 1, cookie: 2, offset: size - 256, length: 512)
          + [UInt8](repeating: 1, count: 512))
      lines.append(await reply(socket))
      socket.send(request(type: 7, cookie: 3, offset: 0, length: 4096))
      lines.append(await reply(socket))
      socket.send(request(type: 42, cookie: 4, offset: 0, length: 0))
      lines.append(await reply(socket))
      socket.send(request(type: 3, flags: 8, cookie: 5, offset: 0, length: 0))
      lines.append(await reply(socket))
      socket.send(request(type: 0, cookie: 6, offset: 0, length: (32 << 20) + 1))
      lines.append(await reply(socket))
      socket.send(request(type: 0, cookie: 7, offset: 4096, length: 0))
      lines.append(await reply(socket))
      socket.send(request(type: 1, cookie: 8, offset: 0, length: (32 << 20) + 1))
      lines.append(await reply(socket))
      lines.append("oversized write: \(await isClosed(socket))")
    }
    do {
      // A client that leaves in the middle of a request.
      let socket = try await handshake(path)
      socket.send(option(7, .be(UInt32(0)) + .be(UInt16(0))))
      _ = await optionReplies(socket)
      socket.send(Array(request(type: 1, cookie: 9, offset: 0, length: 4096).prefix(10)))
    }
    let conversation = clock.now - start
    let size = try await runNBDClient("nbdinfo", ["--size", "nbd+unix:///?socket=\(path)"])
    lines.append("next client: \(size.status) \(size.output)")
    let termination = await running.terminate()
    lines.append("SIGTERM: \(termination.status) signaled \(termination.signaled)")
    lines.append("socket left: \(FileManager.default.fileExists(atPath: path))")
    // What the server reported, but for the readiness probe (a client that
    // closes at once, before sending its flags): qemu-nbd reports a failed
    // greeting write only when the close wins the race, so lines about the
    // greeting or the flags come and go; so, in full test runs, does
    // qemu-nbd's report of a client gone before its first option.
    lines += await running.errorOutput().split(separator: "\n").map(String.init).filter {
      !$0.contains("write failed") && !$0.contains("flags") && !$0.contains("opts magic")
    }
    // The image is untouched: the write past the end wrote nothing.
    let data = try Data(contentsOf: URL(fileURLWithPath: image))
    lines.append("image size \(data.count), tail \(data.suffix(512).allSatisfy { $0 == 0 })")
    return (lines, conversation)
  }

  @Test func badInputGetsQEMUsAnswersAndTheServerStaysUp() async throws {
    let fixture = try ImageFixture()
    let spindle = try await Self.transcript(.spindle, fixture: fixture).lines
    let (qemu, conversation) = try await Self.transcript(.qemu, fixture: fixture)
    if conversation < .seconds(9) {
      #expect(spindle == qemu)
    } else {
      // qemu-nbd may have cut the conversation short: no oracle this time.
      withKnownIssue("qemu-nbd's 10 s handshake limit reached", isIntermittent: true) {
        #expect(spindle == qemu)
      }
    }
    #expect(qemu.contains("next client: 0 1048576\n"))
  }
}
