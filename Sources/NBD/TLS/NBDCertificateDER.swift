import SwiftASN1

/// The DER walking shared by the certificate checks (the subject for
/// `--tls-authz`, the IP entries for an address `tls-hostname`): a
/// certificate's TBSCertificate fields and a node's children.
enum NBDCertificateDER {
  /// A certificate that is not the DER X.509 structure expected.
  struct Malformed: Error, CustomStringConvertible {
    var description: String { "malformed peer certificate" }
  }

  /// The fields of the DER certificate's TBSCertificate, the optional
  /// `[0] EXPLICIT version` left out: serialNumber, signature, issuer,
  /// validity, subject, subjectPublicKeyInfo, then the optional tagged ones.
  static func tbsFields(ofCertificate der: [UInt8]) throws -> [ASN1Node] {
    guard let tbs = children(of: try DER.parse(der)).first else { throw Malformed() }
    var fields = children(of: tbs)
    if let first = fields.first, first.identifier.tagClass == .contextSpecific,
      first.identifier.tagNumber == 0
    {
      fields.removeFirst()
    }
    return fields
  }

  /// A constructed node's children; none for a primitive one.
  static func children(of node: ASN1Node) -> [ASN1Node] {
    guard case .constructed(let nodes) = node.content else { return [] }
    return Array(nodes)
  }
}
