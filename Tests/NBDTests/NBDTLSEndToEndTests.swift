import BlockCore
import BlockDrivers
import Foundation
import Testing

@testable import NBD

/// Spindle's client driver against Spindle's server in this process, over
/// TLS with pre-shared keys (no certificates needed: the X.509 paths are
/// checked against qemu-nbd and qemu-img in NBDTLSInteropTests): data
/// written over TLS lands in the export, and clients without TLS, with the
/// wrong key or an identity `--tls-authz` does not allow are refused with a
/// clear error while the server goes on serving.
@BlockActor
struct NBDTLSEndToEndTests {
  /// A PSK server over a memory export, on a Unix socket in a fresh folder
  /// whose `keys.psk` holds alice and bob.
  @BlockActor
  final class Server {
    private let server: InProcessNBDServer
    var directory: URL { server.directory }
    var socket: String { server.socket }
    var backend: BlockBackend { server.backend }
    /// What the server reported (qemu-nbd's stderr lines).
    var reports: [String] { server.reports }

    init(authorizedIdentity: String? = nil) async throws {
      let directory = try InProcessNBDServer.folder("nbdtls")
      try "alice:\(Self.aliceKey)\nbob:\(Self.bobKey)\n".write(
        to: directory.appendingPathComponent("keys.psk"), atomically: true, encoding: .utf8)
      let node = BlockNode(name: "mem", driver: MemoryDriver(size: 1 << 20))
      try await node.open()
      let credentials = NBDTLSCredentials(
        id: "server", endpoint: .server, directory: directory.path, kind: .psk(username: "qemu"))
      server = try await InProcessNBDServer(
        in: directory, node: node, export: NBDExportInfo(size: 1 << 20),
        tls: try NBDServerTLS(credentials: credentials, authorizedIdentity: authorizedIdentity))
    }

    static let aliceKey = String(repeating: "a1", count: 32)
    static let bobKey = String(repeating: "b2", count: 32)

    /// Client credentials (as an object ID) for `user` with `key`.
    func clientCredentials(user: String, key: String) throws -> String {
      let folder = directory.appendingPathComponent("client-\(UUID().uuidString)")
      try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
      try "\(user):\(key)\n".write(
        to: folder.appendingPathComponent("keys.psk"), atomically: true, encoding: .utf8)
      let id = "psk\(UUID().uuidString.prefix(8))"
      NBDTLSObjects.credentials[id] = NBDTLSCredentials(
        id: id, endpoint: .client, directory: folder.path, kind: .psk(username: user))
      return id
    }

    /// Opens the export as a node, over TLS with the credentials `id`.
    func open(tlsCreds id: String?) async throws -> BlockNode {
      var options = DriverOptions()
      if let id { options["tls-creds"] = id }
      return try await server.open(options)
    }

    func stop() async { await server.stop() }
  }

  init() { NBDClient.register() }

  static func failure(_ body: () async throws -> BlockNode) async -> String? {
    do {
      let node = try await body()
      await node.close()
      return nil
    } catch {
      return "\(error)"
    }
  }

  @Test func dataCrossesTLSBothWays() async throws {
    let server = try await Server()
    let id = try server.clientCredentials(user: "alice", key: Server.aliceKey)
    let node = try await server.open(tlsCreds: id)
    let bytes = (0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 7) }
    try await node.write(at: 4096, bytes: bytes)
    try await node.flush()
    #expect(try await server.backend.root.read(at: 4096, count: 65536) == bytes)
    try await server.backend.root.write(at: 1 << 19, bytes: [UInt8](repeating: 0x5a, count: 512))
    #expect(try await node.read(at: 1 << 19, count: 512) == [UInt8](repeating: 0x5a, count: 512))
    await node.close()
    await server.stop()
    #expect(server.reports.isEmpty, "\(server.reports)")
  }

  @Test func clientsWithoutTLSOrWithTheWrongKeyAreRefused() async throws {
    let server = try await Server()
    let plain = await Self.failure { try await server.open(tlsCreds: nil) }
    #expect(plain?.contains("TLS negotiation required before option") == true, "\(plain ?? "")")
    let wrong = try server.clientCredentials(user: "alice", key: Server.bobKey)
    let refused = await Self.failure { try await server.open(tlsCreds: wrong) }
    #expect(refused?.contains("TLS handshake failed") == true, "\(refused ?? "")")
    // The server goes on serving.
    let good = try server.clientCredentials(user: "alice", key: Server.aliceKey)
    let node = try await server.open(tlsCreds: good)
    #expect(try await node.read(at: 0, count: 512) == [UInt8](repeating: 0, count: 512))
    await node.close()
    await server.stop()
    #expect(
      server.reports.contains { $0.hasPrefix("option negotiation failed: TLS handshake failed") },
      "\(server.reports)")
  }

  @Test func tlsAuthzLetsOnlyItsIdentityThrough() async throws {
    let server = try await Server(authorizedIdentity: "alice")
    let bob = try server.clientCredentials(user: "bob", key: Server.bobKey)
    let refused = await Self.failure { try await server.open(tlsCreds: bob) }
    #expect(refused?.contains("TLS handshake failed") == true, "\(refused ?? "")")
    let alice = try server.clientCredentials(user: "alice", key: Server.aliceKey)
    let node = try await server.open(tlsCreds: alice)
    await node.close()
    await server.stop()
  }

  @Test func tlsClientAgainstAPlainServerIsDenied() async throws {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
      "nbdtls-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let socket = directory.appendingPathComponent("s.sock").path
    let node = BlockNode(name: "mem", driver: MemoryDriver(size: 1 << 20))
    try await node.open()
    let server = NBDServer(persistent: true, shared: 0, handshakeLimit: nil) { _ in }
    try await server.listen(on: .unix(path: socket))
    let task = Task { [backend = BlockBackend(root: node)] in
      await server.run(backend: backend, export: NBDExportInfo(size: 1 << 20))
    }
    try "alice:\(Server.aliceKey)\n".write(
      to: directory.appendingPathComponent("keys.psk"), atomically: true, encoding: .utf8)
    NBDTLSObjects.credentials["plainpsk"] = NBDTLSCredentials(
      id: "plainpsk", endpoint: .client, directory: directory.path, kind: .psk(username: "alice"))
    var options = DriverOptions()
    options["tls-creds"] = "plainpsk"
    let denied = await Self.failure {
      try await ImageOpener.open(
        filename: "nbd+unix:///?socket=\(socket)", format: "nbd", options: options,
        context: OpenContext())
    }
    #expect(denied?.contains("Denied by server for option 5 (starttls)") == true, "\(denied ?? "")")
    server.shutdown()
    await task.value
  }
}
