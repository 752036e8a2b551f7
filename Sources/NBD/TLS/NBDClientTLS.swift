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
  func start(on channel: any Channel, consumed: Int) async throws {
    var serverHostname: String?
    var address: [UInt8]?
    if case .x509(let verifyPeer) = credentials.kind, verifyPeer {
      guard let hostname else {
        throw BlockError(.invalidArgument, "No hostname for certificate validation")
      }
      // An address is checked here against the certificate's IP entries
      // (swift-nio-ssl would check the socket's peer instead); a name by
      // swift-nio-ssl.
      address = NBDCertificateAddresses.bytes(ofAddress: hostname)
      serverHostname = address == nil ? hostname : nil
    }
    let context = try credentials.clientContext(checksHostName: address == nil)
    do {
      let certificate = try await NBDTLSUpgrade.start(
        on: channel, sending: nil, consumed: consumed,
        role: .client(context, serverHostname: serverHostname))
      if let address {
        let named = try certificate.map {
          try NBDCertificateAddresses.ipAddresses(ofCertificate: $0.toDERBytes())
        }
        guard named?.contains(address) == true else {
          channel.close(promise: nil)
          throw NIOSSLExtraError.failedToValidateHostname
        }
      }
    } catch let error as NIOSSLExtraError where error == .failedToValidateHostname {
      throw BlockError(
        .invalidArgument, "Certificate does not match the hostname \(hostname ?? "")")
    } catch let error as NBDTLSUpgrade.PlainTextAfterStartTLS {
      throw BlockError(
        .invalidArgument, "Unexpected data from the server before the TLS handshake (\(error))")
    } catch {
      throw BlockError(.invalidArgument, "TLS handshake failed: \(NBDTLSUpgrade.describe(error))")
    }
  }
}
