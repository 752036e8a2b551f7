import BlockCore
import Foundation

/// Where an RBD image is and how to reach its cluster: QEMU 7.2's
/// `BlockdevOptionsRbd` plus the legacy key/value pairs of its filename
/// syntax.
///
/// Built from `rbd:pool[/namespace]/image[@snapshot][:key=value...]`
/// (``parse(filename:)``, QEMU's `qemu_rbd_parse_filename`) or from the
/// options form (`driver=rbd,pool=...,image=...`, ``take(from:)``).
public struct RBDLocation: Sendable, Equatable {
  /// The RADOS pool.
  public var pool: String
  /// The RBD namespace inside the pool; nil when not given (the filename
  /// syntax always gives one, empty by default, as QEMU's parser does).
  public var namespace: String?
  /// The image's name.
  public var image: String
  /// The snapshot to open read-only, if any.
  public var snapshot: String?
  /// A Ceph configuration file to read instead of the default locations.
  public var conf: String?
  /// The Ceph user (client id) to authenticate as (`id=` in the filename).
  public var user: String?
  /// Other `key=value` pairs of the filename, passed to `rados_conf_set` in
  /// order (mon_host, key, auth_supported, client_mount_timeout, ...).
  public var keyValuePairs: [KeyValue] = []
  /// Monitor addresses (`server.N.host`/`server.N.port`), in order.
  public var servers: [Server] = []
  /// `auth-client-required` modes (`cephx`, `none`), in order.
  public var authClientRequired: [String]?
  /// The key from a `key-secret` object (its bytes base64-encoded, as QEMU
  /// passes them), set as the `key` option.
  public var key: String?

  /// One `key=value` pair of the filename.
  public struct KeyValue: Sendable, Equatable {
    /// The Ceph option name.
    public var name: String
    /// Its value.
    public var value: String
  }

  /// One monitor address of the options form.
  public struct Server: Sendable, Equatable {
    /// Host name or address.
    public var host: String
    /// Port (a number or service name, as QEMU passes it on).
    public var port: String
  }

  /// Creates a location.
  public init(pool: String, namespace: String? = nil, image: String, snapshot: String? = nil) {
    self.pool = pool
    self.namespace = namespace
    self.image = image
    self.snapshot = snapshot
  }

  /// Parses QEMU's `rbd:` filename. `\` escapes the next character in every
  /// part; the errors are QEMU's.
  public static func parse(filename: String) throws -> RBDLocation {
    guard filename.hasPrefix("rbd:") else {
      throw BlockError(.invalidArgument, "File name must start with 'rbd:'")
    }
    var rest = Substring(filename.dropFirst(4))
    guard let pool = nextToken(&rest, "/") else {
      throw BlockError(.invalidArgument, "Pool name is required")
    }
    var imagePart: Substring
    var snapshot: String?
    var options: Substring?
    if escapedIndex(of: "@", in: rest) != nil {
      imagePart = nextToken(&rest, "@") ?? ""
      let snap = nextToken(&rest, ":")
      snapshot = unescape(snap ?? rest)
      options = snap == nil ? nil : rest
    } else {
      if let name = nextToken(&rest, ":") {
        imagePart = name
        options = rest
      } else {
        imagePart = rest
      }
    }
    var namespace = ""
    if let ns = nextToken(&imagePart, "/") { namespace = unescape(ns) }
    var location = RBDLocation(
      pool: unescape(pool), namespace: namespace, image: unescape(imagePart), snapshot: snapshot)
    guard var options else { return location }
    while true {
      guard let name = nextToken(&options, "=") else {
        throw BlockError(.invalidArgument, "conf option \(unescape(options)) has no value")
      }
      let key = unescape(name)
      let value: String
      let last: Bool
      if let token = nextToken(&options, ":") {
        value = unescape(token)
        last = false
      } else {
        value = unescape(options)
        last = true
      }
      switch key {
      case "conf": location.conf = value
      case "id": location.user = value
      default: location.keyValuePairs.append(KeyValue(name: key, value: value))
      }
      if last { break }
    }
    return location
  }

  /// Takes the options form's keys out of `options` (QEMU's
  /// `BlockdevOptionsRbd`): `pool` and `image` are required, and any other
  /// key is refused as QEMU refuses it.
  /// `key-secret` is resolved through `secrets`.
  public static func take(
    from options: inout DriverOptions, secrets: [String: [UInt8]] = [:]
  ) throws -> RBDLocation {
    guard let pool = options.take("pool") else {
      throw BlockError(.invalidArgument, "Parameter 'pool' is missing")
    }
    guard let image = options.take("image") else {
      throw BlockError(.invalidArgument, "Parameter 'image' is missing")
    }
    var location = RBDLocation(
      pool: pool, namespace: options.take("namespace"), image: image,
      snapshot: options.take("snapshot"))
    location.conf = options.take("conf")
    location.user = options.take("user")
    var index = 0
    while let host = options.take("server.\(index).host") {
      guard let port = options.take("server.\(index).port") else {
        throw BlockError(.invalidArgument, "Parameter 'server.\(index).port' is missing")
      }
      location.servers.append(Server(host: host, port: port))
      index += 1
    }
    var modes: [String] = []
    while let mode = options.take("auth-client-required.\(modes.count)") {
      guard mode == "cephx" || mode == "none" else {
        throw BlockError(
          .invalidArgument, "Parameter 'auth-client-required' does not accept value '\(mode)'")
      }
      modes.append(mode)
    }
    if !modes.isEmpty { location.authClientRequired = modes }
    if let secretID = options.take("key-secret") {
      guard let bytes = secrets[secretID] else {
        throw BlockError(.invalidArgument, "No secret with id '\(secretID)'")
      }
      // QEMU passes the secret base64-encoded (`qcrypto_secret_lookup_as_base64`).
      location.key = Data(bytes).base64EncodedString()
    }
    if options.values.keys.contains(where: { $0.hasPrefix("encrypt.") }) {
      throw BlockError.notSupported("Spindle does not support rbd encryption yet")
    }
    // QEMU's QAPI visitor refuses what BlockdevOptionsRbd does not have
    // (key/value pairs belong to the filename syntax only).
    if let unexpected = options.values.keys.sorted().first {
      throw BlockError(.invalidArgument, "Parameter '\(unexpected)' is unexpected")
    }
    return location
  }

  /// `mon_host` from ``servers`` as QEMU joins them (`host:port;...`, an
  /// IPv6 host in brackets); nil without servers.
  public var monitorHosts: String? {
    guard !servers.isEmpty else { return nil }
    return servers.map {
      $0.host.contains(":") ? "[\($0.host)]:\($0.port)" : "\($0.host):\($0.port)"
    }
    .joined(separator: ";")
  }

  /// The options QEMU keeps to name the node (its strong runtime options),
  /// as flat keys.
  public var strongOptions: [String: String] {
    var result = ["pool": pool, "image": image]
    if let namespace { result["namespace"] = namespace }
    if let snapshot { result["snapshot"] = snapshot }
    if let conf { result["conf"] = conf }
    if let user { result["user"] = user }
    for (index, server) in servers.enumerated() {
      result["server.\(index).host"] = server.host
      result["server.\(index).port"] = server.port
    }
    return result
  }

  /// Splits `text` at the first unescaped `delimiter`: returns what comes
  /// before it and leaves what follows in `text`; nil (and `text` as it
  /// was) when there is none (QEMU's `qemu_rbd_next_tok`).
  static func nextToken(_ text: inout Substring, _ delimiter: Character) -> Substring? {
    guard let index = escapedIndex(of: delimiter, in: text) else { return nil }
    let token = text[..<index]
    text = text[text.index(after: index)...]
    return token
  }

  /// The first `delimiter` in `text` not escaped by a backslash.
  static func escapedIndex(of delimiter: Character, in text: Substring) -> Substring.Index? {
    var index = text.startIndex
    while index < text.endIndex {
      let character = text[index]
      if character == delimiter { return index }
      if character == "\\", text.index(after: index) < text.endIndex {
        index = text.index(after: index)
      }
      index = text.index(after: index)
    }
    return nil
  }

  /// Removes escaping backslashes (QEMU's `qemu_rbd_unescape`).
  static func unescape(_ text: Substring) -> String {
    var result = ""
    var index = text.startIndex
    while index < text.endIndex {
      var character = text[index]
      if character == "\\", text.index(after: index) < text.endIndex {
        index = text.index(after: index)
        character = text[index]
      }
      result.append(character)
      index = text.index(after: index)
    }
    return result
  }
}
