import BlockCore
import BlockDrivers

/// Where the NBD client connects (QEMU's `SocketAddress`, the kinds Spindle
/// supports).
public enum NBDServerAddress: Sendable, Equatable, CustomStringConvertible {
  /// TCP: a host name or address and a port (a string, as QEMU keeps it).
  case inet(host: String, port: String)
  /// A Unix socket.
  case unix(path: String)
  /// A socket already connected, inherited as the descriptor this string
  /// numbers (QEMU's `server.type=fd`, `server.str`); it can be used once.
  case fd(String)

  /// The address as QEMU's "Failed to connect to '...'" prints it.
  public var description: String {
    switch self {
    case .inet(let host, let port): "\(host):\(port)"
    case .unix(let path): path
    case .fd(let descriptor): descriptor
    }
  }
}

/// The options of a `driver=nbd` node (QEMU's `BlockdevOptionsNbd`), taken
/// from a node's options after any filename was parsed into them.
public struct NBDClientConfig: Sendable, Equatable {
  /// The server's address.
  public var server: NBDServerAddress
  /// The export's name (empty: the default export).
  public var export: String
  /// `x-dirty-bitmap`: a metadata context read instead of `base:allocation`.
  public var dirtyBitmap: String?
  /// `reconnect-delay`: seconds requests wait for a new connection after the
  /// old one broke (0: they fail at once).
  public var reconnectDelay: UInt32
  /// `open-timeout`: seconds the first connection is retried for (0: once).
  public var openTimeout: UInt32
  /// `x-extended-headers` (Spindle's, `on` by default): whether the
  /// handshake asks for NBD extended headers (off: as QEMU 7.2's client).
  public var extendedHeaders: Bool

  /// `x-multi-conn` (Spindle's, 1 by default): how many connections to
  /// open when the server advertises CAN_MULTI_CONN (1 to 16).
  public var multiConn = 1
  /// `tls-creds`: the ID of the client's TLS credentials (nil: no TLS).
  public var tlsCreds: String?
  /// `tls-hostname`: the name the server's certificate must carry (by
  /// default the inet host).
  public var tlsHostname: String?

  /// The port NBD URLs and legacy options default to.
  public static let defaultPort = "10809"

  /// Creates a configuration.
  public init(
    server: NBDServerAddress, export: String = "", dirtyBitmap: String? = nil,
    reconnectDelay: UInt32 = 0, openTimeout: UInt32 = 0, extendedHeaders: Bool = true
  ) {
    self.server = server
    self.export = export
    self.dirtyBitmap = dirtyBitmap
    self.reconnectDelay = reconnectDelay
    self.openTimeout = openTimeout
    self.extendedHeaders = extendedHeaders
  }

  /// Takes the NBD options out of `options` (a `filename` is parsed first, as
  /// QEMU's `nbd_parse_filename`), with QEMU 7.2's messages for bad ones.
  /// Options it does not know are left for the opener to reject.
  public static func take(from options: inout DriverOptions) throws -> NBDClientConfig {
    if let filename = options.take("filename") {
      try NBDFilename.parse(filename, into: &options)
    }
    try translateLegacyOptions(&options)
    let server = try takeServer(&options)
    let tlsCreds = options.take("tls-creds")
    var tlsHostname = options.take("tls-hostname")
    if tlsCreds != nil, tlsHostname == nil, case .inet(let host, _) = server {
      tlsHostname = host
    }
    let export = options.take("export") ?? ""
    if export.utf8.count > NBDProtocol.maxStringSize {
      throw BlockError(.invalidArgument, "export name too long to send to server")
    }
    let dirtyBitmap = options.take("x-dirty-bitmap")
    let reconnectDelay = try takeSeconds("reconnect-delay", &options)
    let openTimeout = try takeSeconds("open-timeout", &options)
    let extendedHeaders: Bool
    switch options.take("x-extended-headers") {
    case nil, "on": extendedHeaders = true
    case "off": extendedHeaders = false
    case _?:
      throw BlockError(
        .invalidArgument, "Parameter 'x-extended-headers' expects 'on' or 'off'")
    }
    var config = NBDClientConfig(
      server: server, export: export, dirtyBitmap: dirtyBitmap, reconnectDelay: reconnectDelay,
      openTimeout: openTimeout, extendedHeaders: extendedHeaders)
    config.tlsCreds = tlsCreds
    if let count = options.take("x-multi-conn") {
      guard let value = Int(count), (1...16).contains(value) else {
        throw BlockError(
          .invalidArgument, "Parameter 'x-multi-conn' expects a number from 1 to 16")
      }
      config.multiConn = value
    }
    config.tlsHostname = tlsHostname
    return config
  }

  /// QEMU's `nbd_process_legacy_socket_options`: `host`, `port` and `path`
  /// become `server.*`.
  private static func translateLegacyOptions(_ options: inout DriverOptions) throws {
    let path = options.take("path")
    let host = options.take("host")
    let port = options.take("port")
    guard path != nil || host != nil || port != nil else { return }
    if options.values.keys.contains(where: { $0.hasPrefix("server.") }) {
      throw BlockError(.invalidArgument, "Cannot use 'server' and path/host/port at the same time")
    }
    if let path {
      if host != nil {
        throw BlockError(.invalidArgument, "path and host may not be used at the same time")
      }
      if port != nil {
        throw BlockError(.invalidArgument, "port may not be used without host")
      }
      options["server.type"] = "unix"
      options["server.path"] = path
    } else if let host {
      options["server.type"] = "inet"
      options["server.host"] = host
      options["server.port"] = port ?? defaultPort
    }
    // A port alone is ignored here; the address is then missing.
  }

  /// The `server.*` options as an address (QEMU's `nbd_config` and the QAPI
  /// visitor's messages).
  private static func takeServer(_ options: inout DriverOptions) throws -> NBDServerAddress {
    var server = options.takeChild("server")
    guard !server.isEmpty else {
      throw BlockError(.invalidArgument, "NBD server address missing")
    }
    func required(_ key: String) throws -> String {
      guard let value = server.take(key) else {
        throw BlockError(.invalidArgument, "Parameter '\(key)' is missing")
      }
      return value
    }
    let address: NBDServerAddress
    switch try required("type") {
    case "inet":
      let host = try required("host")
      let port = try required("port")
      // Connection tuning Spindle accepts and leaves to the system.
      for key in ["numeric", "to", "ipv4", "ipv6", "keep-alive"] { _ = server.take(key) }
      address = .inet(host: host, port: port)
    case "unix":
      address = .unix(path: try required("path"))
      for key in ["abstract", "tight"] { _ = server.take(key) }
    case "fd":
      address = .fd(try required("str"))
    case let type where type == "vsock":
      throw BlockError(
        .notSupported, "NBD server type '\(type)' is not supported by Spindle yet")
    case let type:
      throw BlockError(.invalidArgument, "Parameter 'type' does not accept value '\(type)'")
    }
    // Anything left under server. is rejected by the opener as the option it is.
    for (key, value) in server.values { options["server.\(key)"] = value }
    return address
  }

  /// A whole number of seconds (QEMU's uint32 options).
  private static func takeSeconds(_ key: String, _ options: inout DriverOptions) throws -> UInt32 {
    guard let text = options.take(key) else { return 0 }
    guard let value = UInt32(text) else {
      throw BlockError(.invalidArgument, "Parameter '\(key)' expects a number")
    }
    return value
  }
}

extension NBDClientConfig {
  /// The name QEMU gives the node (`nbd_refresh_filename`): `nbd+unix:///EXPORT?socket=PATH`,
  /// `nbd+unix://?socket=PATH`, `nbd://HOST:PORT/EXPORT` or `nbd://HOST:PORT`;
  /// nil for an IPv6 host, which has no such name.
  public var filename: String? {
    switch server {
    case .unix(let path):
      return export.isEmpty ? "nbd+unix://?socket=\(path)" : "nbd+unix:///\(export)?socket=\(path)"
    case .inet(let host, let port):
      if host.contains(":") { return nil }
      return export.isEmpty ? "nbd://\(host):\(port)" : "nbd://\(host):\(port)/\(export)"
    case .fd:
      return nil
    }
  }
}
