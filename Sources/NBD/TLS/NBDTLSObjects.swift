import BlockCore

/// The TLS credentials and authorization identities `--object` defined in
/// this process, by ID (QEMU keeps its objects process-wide, in
/// `/objects`): the nbd driver's `tls-creds` and the server's
/// `--tls-creds`/`--tls-authz` name them.
@BlockActor
public enum NBDTLSObjects {
  /// `tls-creds-x509` and `tls-creds-psk` objects.
  public static var credentials: [String: NBDTLSCredentials] = [:]
  /// `authz-simple` objects: the identity each lets through.
  public static var authorizations: [String: String] = [:]
  /// The IDs of the process's other objects (secrets, authz), which are
  /// "not TLS credentials".
  public static var otherObjectIDs: Set<String> = []

  /// The credentials named `id` for `endpoint`, with qemu's messages when
  /// there are none or they are for the other side.
  public static func credentials(_ id: String, for endpoint: NBDTLSCredentials.Endpoint) throws
    -> NBDTLSCredentials
  {
    guard let found = credentials[id] else {
      if otherObjectIDs.contains(id) {
        throw BlockError(.invalidArgument, "Object with id '\(id)' is not TLS credentials")
      }
      throw BlockError(.invalidArgument, "No TLS credentials with id '\(id)'")
    }
    guard found.endpoint == endpoint else {
      throw BlockError(
        .invalidArgument, "Expected TLS credentials for a \(endpoint.rawValue) endpoint")
    }
    return found
  }
}
