import BlockCore
import NIOSSL
import SystemPackage

#if canImport(Glibc)
  import Glibc
#endif

/// TLS credentials as QEMU's `tls-creds-x509` and `tls-creds-psk` objects
/// describe them: a directory of PEM files (X.509) or a `keys.psk` file
/// (PSK), and the side of the connection they are for.
///
/// Turned into swift-nio-ssl contexts by ``serverContext()`` and
/// ``clientContext()``; the errors carry QEMU's texts where QEMU has one
/// ("Unable to access credentials PATH: REASON").
public struct NBDTLSCredentials: Sendable, Equatable {
  /// Which side of a connection credentials are for (QEMU's `endpoint`).
  public enum Endpoint: String, Sendable, Equatable {
    /// A server: qemu-nbd, `spindle serve`.
    case server
    /// A client: the nbd driver, `-L`.
    case client
  }

  /// How the peer is authenticated.
  public enum Kind: Sendable, Equatable {
    /// Certificates in `dir`: `ca-cert.pem`, and `server-cert.pem` and
    /// `server-key.pem` (server) or optionally `client-cert.pem` and
    /// `client-key.pem` (client). `verifyPeer`: a server requires and checks
    /// a client certificate; a client checks the server's certificate and
    /// its host name.
    case x509(verifyPeer: Bool)
    /// Pre-shared keys in `dir/keys.psk`, lines of `username:hexkey`; a
    /// client uses the key of `username`.
    case psk(username: String)
  }

  /// The object's ID.
  public var id: String
  /// The side the credentials are for.
  public var endpoint: Endpoint
  /// The credentials' directory (QEMU's `dir`).
  public var directory: String
  /// X.509 or PSK.
  public var kind: Kind

  /// Credentials as the object defines them.
  public init(id: String, endpoint: Endpoint, directory: String, kind: Kind) {
    self.id = id
    self.endpoint = endpoint
    self.directory = directory
    self.kind = kind
  }

  /// The file QEMU reads for `name` in the credentials' directory.
  func path(_ name: String) -> String { directory + "/" + name }

  /// The path of `name`, which must be readable (QEMU's required files).
  private func requiredFile(_ name: String) throws -> String {
    let file = path(name)
    if access(file, R_OK) != 0 {
      throw BlockError(
        .invalidArgument,
        "Unable to access credentials \(file): \(Errno.describe(Errno(rawValue: errno)))")
    }
    return file
  }

  /// The path of `name` when it exists (QEMU's optional files).
  private func optionalFile(_ name: String) -> String? {
    let file = path(name)
    return access(file, F_OK) == 0 ? file : nil
  }

  /// A context for the server side of STARTTLS; with PSK and
  /// `allowedPSKIdentity`, other identities fail the handshake.
  public func serverContext(allowedPSKIdentity: String? = nil) throws -> NIOSSLContext {
    guard endpoint == .server else {
      throw BlockError(.invalidArgument, "Expected TLS credentials for a server endpoint")
    }
    return try makeContext(server: true, allowedPSKIdentity: allowedPSKIdentity)
  }

  /// A context for the client side of STARTTLS; `checksHostName` off
  /// leaves the name to the caller (X.509 still checks the CA).
  public func clientContext(checksHostName: Bool = true) throws -> NIOSSLContext {
    guard endpoint == .client else {
      throw BlockError(.invalidArgument, "Expected TLS credentials for a client endpoint")
    }
    return try makeContext(
      server: false, allowedPSKIdentity: nil, checksHostName: checksHostName)
  }

  private func makeContext(
    server: Bool, allowedPSKIdentity: String?, checksHostName: Bool = true
  ) throws -> NIOSSLContext {
    var configuration: TLSConfiguration
    switch kind {
    case .x509(let verifyPeer):
      configuration = try x509Configuration(server: server, verifyPeer: verifyPeer)
      if !server && verifyPeer && !checksHostName {
        configuration.certificateVerification = .noHostnameVerification
      }
    case .psk(let username):
      configuration = try pskConfiguration(
        server: server, username: username, allowedIdentity: allowedPSKIdentity)
    }
    do {
      return try NIOSSLContext(configuration: configuration)
    } catch {
      throw BlockError(.invalidArgument, "Cannot load TLS credentials '\(id)': \(error)")
    }
  }

  private func x509Configuration(server: Bool, verifyPeer: Bool) throws -> TLSConfiguration {
    let caFile = try requiredFile("ca-cert.pem")
    if let crl = optionalFile("ca-crl.pem") {
      // Ignoring a revocation list would accept the certificates it revokes.
      throw BlockError(
        .notSupported,
        "Certificate revocation lists (\(crl)) are not supported by Spindle's TLS")
    }
    let certificate: String?
    let key: String?
    if server {
      certificate = try requiredFile("server-cert.pem")
      key = try requiredFile("server-key.pem")
    } else {
      certificate = optionalFile("client-cert.pem")
      key = certificate == nil ? nil : try requiredFile("client-key.pem")
    }
    do {
      let roots = try NIOSSLCertificate.fromPEMFile(caFile)
      var chain: [NIOSSLCertificateSource] = []
      var privateKey: NIOSSLPrivateKeySource?
      if let certificate, let key {
        chain = try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) }
        privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
      }
      var configuration =
        if server, let privateKey {
          TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: privateKey)
        } else {
          TLSConfiguration.makeClientConfiguration()
        }
      configuration.certificateChain = chain
      configuration.privateKey = privateKey
      configuration.minimumTLSVersion = .tlsv12
      configuration.trustRoots = .certificates(roots)
      // A server asks for and requires a client certificate; a client
      // checks the server's against the CA and the host name.
      configuration.certificateVerification =
        verifyPeer ? (server ? .noHostnameVerification : .fullVerification) : .none
      // A server names its CAs in the certificate request (as GnuTLS does):
      // a client then offers only a certificate those CAs signed.
      configuration.sendCANameList = server && verifyPeer
      return configuration
    } catch let error as BlockError {
      throw error
    } catch {
      throw BlockError(.invalidArgument, "Cannot load TLS credentials '\(id)': \(error)")
    }
  }

  private func pskConfiguration(server: Bool, username: String, allowedIdentity: String?) throws
    -> TLSConfiguration
  {
    let keys = try NBDPSKFile(path: requiredFile("keys.psk"))
    var configuration = TLSConfiguration.makePreSharedKeyConfiguration()
    // BoringSSL negotiates external pre-shared keys in TLS 1.2 only; GnuTLS
    // peers (qemu-nbd, libnbd) agree on 1.2 with an ECDHE-PSK suite.
    configuration.minimumTLSVersion = .tlsv12
    configuration.maximumTLSVersion = .tlsv12
    configuration.cipherSuiteValues = [
      .TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA, .TLS_ECDHE_PSK_WITH_AES_256_CBC_SHA,
      .TLS_PSK_WITH_AES_128_CBC_SHA, .TLS_PSK_WITH_AES_256_CBC_SHA,
    ]
    if server {
      configuration.pskServerProvider = { context in
        if let allowedIdentity, context.clientIdentity != allowedIdentity {
          throw NBDPSKFile.UnknownIdentity(identity: context.clientIdentity)
        }
        guard let key = keys.key(for: context.clientIdentity) else {
          throw NBDPSKFile.UnknownIdentity(identity: context.clientIdentity)
        }
        return PSKServerIdentityResponse(key: NIOSSLSecureBytes(key))
      }
    } else {
      guard let key = keys.key(for: username) else {
        throw BlockError(
          .invalidArgument, "Username \(username) not found in PSK file \(keys.path)")
      }
      configuration.pskClientProvider = { _ in
        PSKClientIdentityResponse(key: NIOSSLSecureBytes(key), identity: username)
      }
    }
    return configuration
  }
}
