import NIOSSL

/// TLS for an NBD server (qemu-nbd's `--tls-creds` and `--tls-authz`):
/// clients must STARTTLS before any other option, and with an authorized
/// identity only that client is let through — the subject of its X.509
/// certificate (``NBDDistinguishedName``) or its PSK username.
public struct NBDServerTLS: Sendable {
  /// The context every connection's handshake uses.
  let context: NIOSSLContext
  /// The X.509 subject a client certificate must have (nil: any the CA
  /// signed; PSK identities are checked inside the context).
  let authorizedSubject: String?

  /// TLS with `credentials` (a server endpoint); `authorizedIdentity` is
  /// the `authz-simple` object's `identity`.
  public init(credentials: NBDTLSCredentials, authorizedIdentity: String?) throws {
    context = try credentials.serverContext(allowedPSKIdentity: authorizedIdentity)
    if case .x509 = credentials.kind {
      authorizedSubject = authorizedIdentity
    } else {
      authorizedSubject = nil
    }
  }

  /// Why a client that completed the handshake is refused, or nil.
  func refusal(of certificate: NIOSSLCertificate?) -> String? {
    guard let authorizedSubject else { return nil }
    guard let certificate, let der = try? certificate.toDERBytes(),
      let subject = try? NBDDistinguishedName.subject(ofCertificate: der)
    else { return "No certificate was found." }
    return subject == authorizedSubject
      ? nil : "TLS x509 authz check for \(subject) is denied"
  }
}
