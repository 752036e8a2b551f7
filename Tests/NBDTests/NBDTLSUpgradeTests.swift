import BlockCore
import Foundation
import NIOCore
import NIOEmbedded
import Testing

@testable import NBD

/// STARTTLS never lets plain text pass for TLS data: bytes the connection
/// read after the STARTTLS option but before TLS was installed (sent too
/// early by a broken peer, or injected by someone on the path) make the
/// upgrade fail before the ACK goes out, in the same event-loop turn that
/// would install TLS.
@Suite struct NBDTLSUpgradeTests {
  /// A server context over pre-shared keys (no certificates needed).
  static func context() throws -> (NBDServerTLS, URL) {
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent(
      "nbdtlsup-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    try "alice:0102030405060708\n".write(
      to: folder.appendingPathComponent("keys.psk"), atomically: true, encoding: .utf8)
    let credentials = NBDTLSCredentials(
      id: "s", endpoint: .server, directory: folder.path, kind: .psk(username: "qemu"))
    return (try NBDServerTLS(credentials: credentials, authorizedIdentity: nil), folder)
  }

  /// A connected test channel whose pipeline counts what it reads, as a
  /// server's or client's connection does.
  static func countingChannel() async throws -> NIOAsyncTestingChannel {
    let channel = NIOAsyncTestingChannel()
    try await channel.testingEventLoop.executeInContext {
      try channel.pipeline.syncOperations.addHandler(NBDByteCounter())
    }
    try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
    return channel
  }

  @Test func plainTextAfterTheOptionFailsTheUpgradeBeforeTheACK() async throws {
    let (tls, folder) = try Self.context()
    defer { try? FileManager.default.removeItem(at: folder) }
    let channel = try await Self.countingChannel()
    // The STARTTLS option (16 bytes) the reader consumed, then 3 more.
    try await channel.writeInbound(ByteBuffer(repeating: 1, count: 16))
    try await channel.writeInbound(ByteBuffer(bytes: [9, 9, 9]))
    await #expect(throws: NBDTLSUpgrade.PlainTextAfterStartTLS.self) {
      _ = try await NBDTLSUpgrade.start(
        on: channel, sending: ByteBuffer(string: "ACK"), consumed: 16,
        role: .server(tls.context))
    }
    #expect(try await channel.readOutbound(as: ByteBuffer.self) == nil)
    _ = try? await channel.finish()
  }

  @Test func everyByteConsumedTheACKGoesOutInPlainText() async throws {
    let (tls, folder) = try Self.context()
    defer { try? FileManager.default.removeItem(at: folder) }
    let channel = try await Self.countingChannel()
    try await channel.writeInbound(ByteBuffer(repeating: 1, count: 16))
    let upgrade = Task {
      try await NBDTLSUpgrade.start(
        on: channel, sending: ByteBuffer(string: "ACK"), consumed: 16,
        role: .server(tls.context))
    }
    let ack = try await channel.waitForOutboundWrite(as: ByteBuffer.self)
    #expect(ack == ByteBuffer(string: "ACK"))
    // The peer leaves during the handshake: the upgrade fails, not hangs.
    try await channel.close()
    await #expect(throws: (any Error).self) { _ = try await upgrade.value }
  }
}
