import BlockCore
import NIOCore
import NIOSSL

/// TLS for an NBD client (the nbd driver's `tls-creds`, `qemu-nbd -L
/// --tls-creds`): STARTTLS first, then the server's certificate checked
/// against the CA and `hostname`, or the pre-shared key.
public struct NBDClientTLS: Sendable {
  /// The client's credentials.
  public let credentials: NBDTLSCredentials
  /// The name the server's certificate must carry (QEMU's `tls-hostname`,
  /// by default the inet host; nil for a Unix socket without one).
  public let hostname: String?

  /// TLS with `credentials` (a client endpoint), checking `hostname`.
  public init(credentials: NBDTLSCredentials, hostname: String?) {
    self.credentials = credentials
    self.hostname = hostname
  }

  /// Runs the client's side of the handshake after the server acknowledged
  /// STARTTLS; errors carry QEMU's texts where it has one.
  func start(on channel: any Channel) async throws {
    var serverHostname: String?
    if case .x509(let verifyPeer) = credentials.kind, verifyPeer {
      guard let hostname else {
        throw BlockError(.invalidArgument, "No hostname for certificate validation")
      }
      // swift-nio-ssl checks an address against the peer's own address (an
      // IP literal cannot be a TLS server name).
      serverHostname = Self.isIPAddress(hostname) ? nil : hostname
    }
    let context = try credentials.clientContext()
    do {
      _ = try await NBDTLSUpgrade.start(
        on: channel, sending: nil, role: .client(context, serverHostname: serverHostname))
    } catch let error as NIOSSLExtraError where error == .failedToValidateHostname {
      throw BlockError(
        .invalidArgument, "Certificate does not match the hostname \(hostname ?? "")")
    } catch {
      throw BlockError(.invalidArgument, "TLS handshake failed: \(NBDTLSUpgrade.describe(error))")
    }
  }

  private static func isIPAddress(_ host: String) -> Bool {
    (try? SocketAddress(ipAddress: host, port: 0)) != nil
  }
}
