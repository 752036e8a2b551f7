import NBD

/// `tls-creds-x509`, `tls-creds-psk` and `authz-simple` objects, checked as
/// QEMU 7.2 checks their properties and loaded when defined (QEMU loads the
/// credentials when the object is completed, so a missing file fails the
/// command before anything else happens).
enum TLSObjects {
  /// The properties each type takes (QEMU's `TlsCredsX509Properties`,
  /// `TlsCredsPskProperties`, `AuthZSimpleProperties`).
  static let properties: [String: [String]] = [
    "tls-creds-x509": [
      "loaded", "endpoint", "dir", "priority", "verify-peer", "sanity-check", "passwordid",
    ],
    "tls-creds-psk": ["loaded", "endpoint", "dir", "priority", "username"],
    "authz-simple": ["identity"],
  ]

  /// What `--object TYPE,help` prints for these types: the properties
  /// Spindle takes, in QEMU's layout.
  static func help(_ type: String) -> String? {
    guard let names = properties[type] else { return nil }
    let kinds = [
      "loaded": "bool", "verify-peer": "bool", "sanity-check": "bool",
      "endpoint": "QCryptoTLSCredsEndpoint",
    ]
    return "\(type) options:\n"
      + names.filter { $0 != "priority" && $0 != "passwordid" }.sorted().map {
        "  \($0)=<\(kinds[$0] ?? "string")>\n"
      }.joined() + "\n"
  }

  /// QEMU's QAPI checks: no nested keys, no unknown member, enumerations
  /// and booleans spelled as QEMU accepts them.
  static func checkProperties(type: String, _ definition: ObjectDefinition) throws(ObjectError) {
    let names = properties[type] ?? []
    for name in names where definition.nestedKey(under: name) != nil {
      throw ObjectError("Parameters '\(name).*' are unexpected")
    }
    for name in definition.memberNames
    where name != "qom-type" && name != "id" && !names.contains(name) {
      throw ObjectError("Parameter '\(name)' is unexpected")
    }
    if let endpoint = definition["endpoint"], endpoint != "client", endpoint != "server" {
      throw ObjectError("Parameter 'endpoint' does not accept value '\(endpoint)'")
    }
    for name in ["loaded", "verify-peer", "sanity-check"] {
      if let value = definition[name], boolean(value) == nil {
        throw ObjectError("Parameter '\(name)' expects 'on' or 'off'")
      }
    }
    // GnuTLS priority strings and encrypted keys have no equivalent here.
    for name in ["priority", "passwordid"] where definition[name] != nil {
      throw ObjectError("Parameter '\(name)' is not supported by Spindle's TLS")
    }
  }

  /// A boolean as QEMU's keyval parser takes it.
  private static func boolean(_ value: String) -> Bool? {
    switch value {
    case "on", "yes", "true", "y": true
    case "off", "no", "false", "n": false
    default: nil
    }
  }

  /// The credentials a `tls-creds-*` object defines, loaded once to report
  /// a missing or unreadable file now.
  static func credentials(type: String, id: String, _ definition: ObjectDefinition)
    throws(ObjectError) -> NBDTLSCredentials
  {
    guard let directory = definition["dir"] else {
      throw ObjectError("Missing 'dir' property value")
    }
    let endpoint: NBDTLSCredentials.Endpoint =
      definition["endpoint"] == "server" ? .server : .client
    let kind: NBDTLSCredentials.Kind =
      type == "tls-creds-psk"
      ? .psk(username: definition["username"] ?? "qemu")
      : .x509(verifyPeer: definition["verify-peer"].flatMap(boolean) ?? true)
    let credentials = NBDTLSCredentials(
      id: id, endpoint: endpoint, directory: directory, kind: kind)
    do {
      _ =
        endpoint == .server ? try credentials.serverContext() : try credentials.clientContext()
    } catch {
      throw ObjectError("\(error)")
    }
    return credentials
  }

  /// The identity an `authz-simple` object lets through.
  static func identity(_ definition: ObjectDefinition) throws(ObjectError) -> String {
    guard let identity = definition["identity"] else {
      throw ObjectError("Parameter 'identity' is missing")
    }
    return identity
  }
}
