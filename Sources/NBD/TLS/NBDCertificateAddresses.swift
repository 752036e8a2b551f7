import SwiftASN1

#if canImport(Glibc)
  import Glibc
#endif

/// The IP addresses a certificate's subjectAltName extension names: what
/// a client checks the server's certificate against when `tls-hostname` is
/// an address (swift-nio-ssl checks names, and addresses only against the
/// socket's peer, which a Unix socket or a DNS lie would not make right).
enum NBDCertificateAddresses {
  /// The raw `iPAddress` entries (4 or 16 bytes each) of the DER
  /// certificate `der`; none when it has no subjectAltName.
  static func ipAddresses(ofCertificate der: [UInt8]) throws -> [[UInt8]] {
    // Extensions are the `[3] EXPLICIT` field of the TBSCertificate.
    guard
      let wrapper = try NBDCertificateDER.tbsFields(ofCertificate: der).first(where: {
        $0.identifier.tagClass == .contextSpecific && $0.identifier.tagNumber == 3
      }), let extensions = NBDCertificateDER.children(of: wrapper).first
    else { return [] }
    var addresses: [[UInt8]] = []
    for field in NBDCertificateDER.children(of: extensions) {
      let parts = NBDCertificateDER.children(of: field)
      guard let oid = parts.first, let value = parts.last,
        try ASN1ObjectIdentifier(derEncoded: oid).description == "2.5.29.17",
        case .primitive(let octets) = value.content
      else { continue }
      // GeneralNames: iPAddress is `[7] IMPLICIT OCTET STRING`.
      for name in NBDCertificateDER.children(of: try DER.parse(octets))
      where name.identifier.tagClass == .contextSpecific && name.identifier.tagNumber == 7 {
        if case .primitive(let bytes) = name.content { addresses.append(Array(bytes)) }
      }
    }
    return addresses
  }

  /// The bytes of an IPv4 or IPv6 address literal, nil for anything else.
  static func bytes(ofAddress text: String) -> [UInt8]? {
    var v4 = in_addr()
    if inet_pton(AF_INET, text, &v4) == 1 {
      return withUnsafeBytes(of: &v4) { Array($0) }
    }
    var v6 = in6_addr()
    if inet_pton(AF_INET6, text, &v6) == 1 {
      return withUnsafeBytes(of: &v6) { Array($0) }
    }
    return nil
  }
}
