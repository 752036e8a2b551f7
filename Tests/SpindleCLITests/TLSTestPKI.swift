import Foundation
import Testing

/// Certificates and pre-shared keys for NBD TLS tests, made with the
/// `openssl` command in a temporary folder and laid out in the folders
/// QEMU's `tls-creds-x509` and `tls-creds-psk` objects read (`dir=`):
///
/// - `server/`: `ca-cert.pem`, `server-cert.pem` (CN=localhost, SAN
///   DNS:localhost and IP:127.0.0.1, serverAuth), `server-key.pem`;
/// - `client/`: `ca-cert.pem`, `client-cert.pem` (subject
///   `C=GB, O=Example Org, CN=laptop.example.com`, clientAuth),
///   `client-key.pem`;
/// - `nocert/`: `ca-cert.pem` only;
/// - `untrusted/`: `ca-cert.pem` and a client certificate and key with the
///   same subject, signed by another CA that the server does not trust;
/// - `nokey/`: `ca-cert.pem` and `server-cert.pem` without `server-key.pem`;
/// - `psk/`: `keys.psk` with `alice` and `bob` (random 32-byte keys);
///   `stranger/`: `keys.psk` with `eve`, whom `psk/` does not know.
///
/// The folder is removed when the value is released.
final class TLSTestPKI: Sendable {
  /// The subject of the trusted client certificate, as GnuTLS 3.7 (and so
  /// qemu-nbd 7.2's `--tls-authz`) prints it.
  static let clientSubject = "C=GB,O=Example Org,CN=laptop.example.com"

  let fixture: ImageFixture

  var server: String { fixture.path("server") }
  var client: String { fixture.path("client") }
  var nocert: String { fixture.path("nocert") }
  var untrusted: String { fixture.path("untrusted") }
  var nokey: String { fixture.path("nokey") }
  var psk: String { fixture.path("psk") }
  var stranger: String { fixture.path("stranger") }

  private init(fixture: ImageFixture) { self.fixture = fixture }

  /// Makes the two CAs, the certificates and the key files (fails the test
  /// when `openssl` does).
  static func make() async throws -> TLSTestPKI {
    let pki = TLSTestPKI(fixture: try ImageFixture())
    let work = pki.fixture.path("work")
    for folder in [work, pki.server, pki.client, pki.nocert, pki.untrusted, pki.nokey]
      + [pki.psk, pki.stranger]
    {
      try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }
    try await makeCA(in: work, name: "ca", subject: "/CN=Spindle Test CA")
    try await makeCA(in: work, name: "other-ca", subject: "/CN=Untrusted Test CA")
    try await makeCertificate(
      in: work, name: "server", ca: "ca", subject: "/O=Spindle/CN=localhost",
      extensions: "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    let clientSubject = "/C=GB/O=Example Org/CN=laptop.example.com"
    for (name, ca) in [("client", "ca"), ("stray", "other-ca")] {
      try await makeCertificate(
        in: work, name: name, ca: ca, subject: clientSubject,
        extensions: "extendedKeyUsage=clientAuth\n")
    }
    func place(_ file: String, _ folder: String, as name: String? = nil) throws {
      try FileManager.default.copyItem(
        atPath: "\(work)/\(file)", toPath: "\(folder)/\(name ?? file)")
    }
    for folder in [pki.server, pki.client, pki.nocert, pki.untrusted, pki.nokey] {
      try place("ca-cert.pem", folder)
    }
    try place("server-cert.pem", pki.server)
    try place("server-key.pem", pki.server)
    try place("server-cert.pem", pki.nokey)
    try place("client-cert.pem", pki.client)
    try place("client-key.pem", pki.client)
    try place("stray-cert.pem", pki.untrusted, as: "client-cert.pem")
    try place("stray-key.pem", pki.untrusted, as: "client-key.pem")
    var keys = ""
    for name in ["alice", "bob"] { keys += "\(name):\(try await randomHexKey())\n" }
    try keys.write(toFile: "\(pki.psk)/keys.psk", atomically: true, encoding: .utf8)
    try "eve:\(try await randomHexKey())\n".write(
      toFile: "\(pki.stranger)/keys.psk", atomically: true, encoding: .utf8)
    return pki
  }

  /// `openssl ARGS`, required to succeed.
  private static func openssl(_ arguments: [String]) async throws -> String {
    let result = try await runProcess("openssl", arguments)
    try #require(result.status == 0, "openssl \(arguments): \(result)")
    return result.output
  }

  private static func randomHexKey() async throws -> String {
    let key = try await openssl(["rand", "-hex", "32"])
      .trimmingCharacters(in: .whitespacesAndNewlines)
    try #require(key.count == 64)
    return key
  }

  /// A self-signed CA: `NAME-cert.pem`, `NAME-key.pem` in `folder`.
  private static func makeCA(in folder: String, name: String, subject: String) async throws {
    _ = try await openssl([
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(folder)/\(name)-key.pem",
      "-out", "\(folder)/\(name)-cert.pem", "-days", "365", "-subj", subject,
      "-addext", "basicConstraints=critical,CA:TRUE",
      "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    ])
  }

  /// A leaf certificate signed by the CA `ca`: `NAME-cert.pem`,
  /// `NAME-key.pem` in `folder`, with `extensions` (lines of an openssl
  /// extension file) besides the usual end-entity ones.
  private static func makeCertificate(
    in folder: String, name: String, ca: String, subject: String, extensions: String
  ) async throws {
    let request = "\(folder)/\(name).csr"
    let extensionFile = "\(folder)/\(name).ext"
    _ = try await openssl([
      "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(folder)/\(name)-key.pem",
      "-out", request, "-subj", subject,
    ])
    try ("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n" + extensions)
      .write(toFile: extensionFile, atomically: true, encoding: .utf8)
    _ = try await openssl([
      "x509", "-req", "-in", request, "-CA", "\(folder)/\(ca)-cert.pem",
      "-CAkey", "\(folder)/\(ca)-key.pem", "-CAcreateserial",
      "-out", "\(folder)/\(name)-cert.pem", "-days", "365", "-extfile", extensionFile,
    ])
  }
}
