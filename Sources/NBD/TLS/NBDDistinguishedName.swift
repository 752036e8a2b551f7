import SwiftASN1

/// A certificate's subject as the string `--tls-authz` compares with an
/// `authz-simple` object's `identity`: what qemu-nbd 7.2 compares with
/// GnuTLS 3.7 (`gnutls_x509_crt_get_dn`): the RDNs in the certificate's
/// order, RFC 4514's escaping (`C=GB,O=Example Org,CN=host`, checked
/// against qemu-nbd).
enum NBDDistinguishedName {
  /// The subject of the DER-encoded certificate `der`.
  static func subject(ofCertificate der: [UInt8]) throws -> String {
    // serialNumber, signature, issuer, validity, subject.
    let fields = try NBDCertificateDER.tbsFields(ofCertificate: der)
    guard fields.count > 4 else { throw NBDCertificateDER.Malformed() }
    return try name(fields[4])
  }

  /// An X.501 Name (a SEQUENCE OF RelativeDistinguishedName) as GnuTLS
  /// prints it.
  static func name(_ node: ASN1Node) throws -> String {
    try NBDCertificateDER.children(of: node).map { rdn in
      try NBDCertificateDER.children(of: rdn).map { attribute in
        let parts = NBDCertificateDER.children(of: attribute)
        guard parts.count == 2 else { throw NBDCertificateDER.Malformed() }
        let oid = try ASN1ObjectIdentifier(derEncoded: parts[0])
        let type = shortNames[oid.description] ?? oid.description
        return type + "=" + value(parts[1], knownType: shortNames[oid.description] != nil)
      }.joined(separator: "+")
    }.joined(separator: ",")
  }

  /// The short names GnuTLS prints for the usual attribute types.
  private static let shortNames: [String: String] = [
    "2.5.4.3": "CN", "2.5.4.4": "SN", "2.5.4.5": "serialNumber", "2.5.4.6": "C",
    "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.9": "STREET", "2.5.4.10": "O", "2.5.4.11": "OU",
    "2.5.4.12": "title", "2.5.4.42": "GN", "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID", "1.2.840.113549.1.9.1": "EMAIL",
  ]

  /// An attribute value: a string escaped as RFC 4514 asks, or `#` and the
  /// hex of its DER encoding for other types and for unknown attributes.
  private static func value(_ node: ASN1Node, knownType: Bool) -> String {
    if knownType, node.identifier.tagClass == .universal,
      case .primitive(let bytes) = node.content,
      let text = string(bytes, tag: node.identifier.tagNumber)
    {
      return escape(text)
    }
    return "#" + node.encodedBytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
  }

  /// The text of a directory string (UTF8String, PrintableString,
  /// T61String, IA5String, BMPString), nil for other tags.
  private static func string(_ bytes: ArraySlice<UInt8>, tag: UInt) -> String? {
    switch tag {
    case 12, 19, 20, 22: return String(decoding: bytes, as: UTF8.self)
    case 30:
      guard bytes.count % 2 == 0 else { return nil }
      let units = stride(from: bytes.startIndex, to: bytes.endIndex, by: 2).map {
        UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1])
      }
      return String(decoding: units, as: UTF16.self)
    default: return nil
    }
  }

  /// RFC 4514 §2.4: `"+,;<>\` anywhere, `#` or a space first, a space last.
  static func escape(_ text: String) -> String {
    var out = ""
    let characters = Array(text)
    for (index, character) in characters.enumerated() {
      if "\"+,;<>\\".contains(character) || (index == 0 && (character == "#" || character == " "))
        || (index == characters.count - 1 && character == " ")
      {
        out.append("\\")
      }
      out.append(character)
    }
    return out
  }
}
