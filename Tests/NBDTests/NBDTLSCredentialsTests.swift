import BlockCore
import Foundation
import NIOCore
import Testing

@testable import NBD

/// TLS credentials as QEMU's `tls-creds-*` objects load them: the files a
/// directory must hold, `keys.psk`'s format, the endpoint checks, and the
/// subject string `--tls-authz` compares.
@Suite struct NBDTLSCredentialsTests {
  /// A fresh folder, removed by the caller.
  static func folder() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent(
      "nbdtls-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
  }

  static func message(_ body: () throws -> Void) -> String? {
    do {
      try body()
      return nil
    } catch {
      return "\(error)"
    }
  }

  @Test func pskFileLinesAreNamesAndHexKeys() throws {
    let folder = try Self.folder()
    defer { try? FileManager.default.removeItem(at: folder) }
    let path = folder.appendingPathComponent("keys.psk").path
    // Lines may end in CR LF (a file written on Windows).
    try "alice:00ff10AB\r\nbob:0102\n\nalice:9999\n".write(
      toFile: path, atomically: true, encoding: .utf8)
    let keys = try NBDPSKFile(path: path)
    #expect(keys.key(for: "alice") == [0x00, 0xff, 0x10, 0xab])
    #expect(keys.key(for: "bob") == [0x01, 0x02])
    #expect(keys.key(for: "carol") == nil)
  }

  @Test(arguments: ["alice:0g\n", "alice:abc\n", "no colon\n", "alice:\n"])
  func malformedPSKLinesAreRefused(_ text: String) throws {
    let folder = try Self.folder()
    defer { try? FileManager.default.removeItem(at: folder) }
    let path = folder.appendingPathComponent("keys.psk").path
    try ("bob:0102\n" + text).write(toFile: path, atomically: true, encoding: .utf8)
    #expect(
      Self.message { _ = try NBDPSKFile(path: path) }
        == "Malformed line 2 in PSK file \(path)")
  }

  @Test func missingFilesAreNamedWithTheSystemsReason() throws {
    let folder = try Self.folder()
    defer { try? FileManager.default.removeItem(at: folder) }
    let x509 = NBDTLSCredentials(
      id: "t", endpoint: .server, directory: folder.path, kind: .x509(verifyPeer: true))
    #expect(
      Self.message { _ = try x509.serverContext() }
        == "Unable to access credentials \(folder.path)/ca-cert.pem: No such file or directory")
    let psk = NBDTLSCredentials(
      id: "p", endpoint: .client, directory: folder.path, kind: .psk(username: "alice"))
    #expect(
      Self.message { _ = try psk.clientContext() }
        == "Unable to access credentials \(folder.path)/keys.psk: No such file or directory")
  }

  @Test func endpointsMustMatchTheSide() throws {
    let folder = try Self.folder()
    defer { try? FileManager.default.removeItem(at: folder) }
    try "alice:0102\n".write(
      toFile: folder.appendingPathComponent("keys.psk").path, atomically: true, encoding: .utf8)
    let client = NBDTLSCredentials(
      id: "c", endpoint: .client, directory: folder.path, kind: .psk(username: "alice"))
    let server = NBDTLSCredentials(
      id: "s", endpoint: .server, directory: folder.path, kind: .psk(username: "qemu"))
    #expect(
      Self.message { _ = try client.serverContext() }
        == "Expected TLS credentials for a server endpoint")
    #expect(
      Self.message { _ = try server.clientContext() }
        == "Expected TLS credentials for a client endpoint")
    #expect(Self.message { _ = try server.serverContext() } == nil)
    #expect(Self.message { _ = try client.clientContext() } == nil)
    let stranger = NBDTLSCredentials(
      id: "x", endpoint: .client, directory: folder.path, kind: .psk(username: "zed"))
    #expect(
      Self.message { _ = try stranger.clientContext() }
        == "Username zed not found in PSK file \(folder.path)/keys.psk")
  }

  @Test func revocationListsAreRefusedNotIgnored() throws {
    let folder = try Self.folder()
    defer { try? FileManager.default.removeItem(at: folder) }
    for name in ["ca-cert.pem", "ca-crl.pem"] {
      try "".write(
        toFile: folder.appendingPathComponent(name).path, atomically: true, encoding: .utf8)
    }
    let x509 = NBDTLSCredentials(
      id: "t", endpoint: .client, directory: folder.path, kind: .x509(verifyPeer: true))
    #expect(
      Self.message { _ = try x509.clientContext() }
        == "Certificate revocation lists (\(folder.path)/ca-crl.pem) are not supported by "
        + "Spindle's TLS")
  }

  @Test(arguments: [
    ("Example Org", "Example Org"), ("a,b", "a\\,b"), ("#x", "\\#x"), (" x ", "\\ x\\ "),
    ("a+b;c<d>e\"f\\g", "a\\+b\\;c\\<d\\>e\\\"f\\\\g"), ("mid # ok", "mid # ok"),
  ])
  func subjectValuesAreEscapedAsRFC4514(_ value: String, _ escaped: String) {
    #expect(NBDDistinguishedName.escape(value) == escaped)
  }
}
