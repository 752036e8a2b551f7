import BlockCore
import BlockDrivers

/// The file names QEMU 7.2's NBD driver parses (`nbd_parse_filename`), turned
/// into `server.*` and `export` options:
///
/// - `nbd://HOST[:PORT][/EXPORT]` and `nbd+tcp://...` (no query),
/// - `nbd+unix:///[EXPORT]?socket=PATH` (no host or port, one query
///   parameter, `socket`),
/// - `nbd:HOST:PORT[:exportname=NAME]` and `nbd:unix:PATH[:exportname=NAME]`.
public enum NBDFilename {
  /// The URL schemes of the NBD driver (QEMU's `protocol_name`s).
  public static let schemes = ["nbd", "nbd+tcp", "nbd+unix"]

  private static let exportNameOption = ":exportname="

  /// Parses `filename` into `options`, with QEMU's messages.
  public static func parse(_ filename: String, into options: inout DriverOptions) throws {
    let conflicting = options.values.keys.sorted().first { key in
      ["host", "port", "path", "export"].contains(key) || key.hasPrefix("server.")
    }
    if let conflicting {
      throw BlockError(
        .invalidArgument, "Option '\(conflicting)' cannot be used with a file name")
    }
    if filename.contains("://") {
      guard let parsed = parseURL(filename) else {
        throw BlockError(.invalidArgument, "No valid URL specified")
      }
      for (key, value) in parsed { options[key] = value }
      return
    }
    try parseLegacy(filename, into: &options)
  }

  /// `nbd:HOST:PORT[:exportname=NAME]`, `nbd:unix:PATH[:exportname=NAME]`.
  private static func parseLegacy(_ filename: String, into options: inout DriverOptions) throws {
    var file = Substring(filename)
    if let marker = file.range(of: exportNameOption) {
      let name = file[marker.upperBound...]
      // QEMU: an empty name after the marker leaves every option unset.
      if name.isEmpty { return }
      options["export"] = String(name)
      file = file[..<marker.lowerBound]
    }
    guard file.hasPrefix("nbd:") else {
      throw BlockError(.invalidArgument, "File name string for NBD must start with 'nbd:'")
    }
    let hostSpec = file.dropFirst(4)
    if hostSpec.isEmpty { return }
    if hostSpec.hasPrefix("unix:") {
      options["server.type"] = "unix"
      options["server.path"] = String(hostSpec.dropFirst(5))
      return
    }
    let (host, port) = try parseInetAddress(hostSpec)
    options["server.type"] = "inet"
    options["server.host"] = host
    options["server.port"] = port
  }

  /// QEMU's `inet_parse` of `HOST:PORT`, `[V6]:PORT` or `:PORT` (options
  /// after a comma are ignored).
  static func parseInetAddress(_ text: Substring) throws -> (host: String, port: String) {
    let spec = text.prefix { $0 != "," }
    func port(after rest: Substring) -> String? {
      guard rest.first == ":", rest.count > 1 else { return nil }
      return String(rest.dropFirst())
    }
    if spec.hasPrefix(":") {
      guard let value = port(after: spec) else {
        throw BlockError(.invalidArgument, "error parsing port in address '\(text)'")
      }
      return ("", value)
    }
    if spec.hasPrefix("[") {
      guard let close = spec.firstIndex(of: "]"), close > spec.index(after: spec.startIndex),
        let value = port(after: spec[spec.index(after: close)...])
      else { throw BlockError(.invalidArgument, "error parsing IPv6 address '\(text)'") }
      return (String(spec[spec.index(after: spec.startIndex)..<close]), value)
    }
    guard let colon = spec.firstIndex(of: ":"), colon > spec.startIndex,
      let value = port(after: spec[colon...])
    else { throw BlockError(.invalidArgument, "error parsing address '\(text)'") }
    return (String(spec[..<colon]), value)
  }

  /// An NBD URL as options, or nil when QEMU's `nbd_parse_uri` (over GLib's
  /// URI parser) rejects it.
  static func parseURL(_ url: String) -> [String: String]? {
    guard let schemeEnd = url.range(of: "://") else { return nil }
    let scheme = String(url[..<schemeEnd.lowerBound])
    guard schemes.contains(scheme) else { return nil }
    let isUnix = scheme == "nbd+unix"
    var rest = url[schemeEnd.upperBound...]
    if let hash = rest.firstIndex(of: "#") { rest = rest[..<hash] }
    var query: Substring?
    if let mark = rest.firstIndex(of: "?") {
      query = rest[rest.index(after: mark)...]
      rest = rest[..<mark]
    }
    let authorityEnd = rest.firstIndex(of: "/") ?? rest.endIndex
    guard let (host, port) = parseAuthority(rest[..<authorityEnd]),
      let path = percentDecoded(rest[authorityEnd...])
    else { return nil }
    var options: [String: String] = [:]
    let export = path.hasPrefix("/") ? String(path.dropFirst()) : path
    if !export.isEmpty { options["export"] = export }

    var parameters: [String: String] = [:]
    if let query, !query.isEmpty {
      for pair in query.split(separator: "&", omittingEmptySubsequences: false) {
        guard let equals = pair.firstIndex(of: "="),
          let key = percentDecoded(pair[..<equals]),
          let value = percentDecoded(pair[pair.index(after: equals)...])
        else { return nil }
        parameters[key] = value
      }
    }
    if parameters.count > 1 || (isUnix && parameters.isEmpty) || (!isUnix && !parameters.isEmpty) {
      return nil
    }
    if isUnix {
      guard host == nil, port == nil, let socket = parameters["socket"] else { return nil }
      options["server.type"] = "unix"
      options["server.path"] = socket
    } else {
      guard let host else { return nil }
      options["server.type"] = "inet"
      options["server.host"] = host
      options["server.port"] =
        port.flatMap { $0 > 0 ? String($0) : nil } ?? NBDClientConfig.defaultPort
    }
    return options
  }

  /// The host (nil when empty; IPv6 brackets removed) and port (nil when
  /// absent) of a URL's authority, or nil when they are malformed.
  private static func parseAuthority(_ authority: Substring) -> (String?, Int?)? {
    var hostPort = authority
    if let at = hostPort.lastIndex(of: "@") { hostPort = hostPort[hostPort.index(after: at)...] }
    var host: Substring
    var portText: Substring?
    if hostPort.hasPrefix("[") {
      guard let close = hostPort.firstIndex(of: "]") else { return nil }
      host = hostPort[hostPort.index(after: hostPort.startIndex)..<close]
      let after = hostPort[hostPort.index(after: close)...]
      if !after.isEmpty {
        guard after.first == ":" else { return nil }
        portText = after.dropFirst()
      }
    } else if let colon = hostPort.lastIndex(of: ":") {
      host = hostPort[..<colon]
      portText = hostPort[hostPort.index(after: colon)...]
    } else {
      host = hostPort
    }
    var port: Int?
    if let portText, !portText.isEmpty {
      guard portText.allSatisfy(\.isASCII), let value = Int(portText), value <= 65535 else {
        return nil
      }
      port = value
    }
    guard let decodedHost = percentDecoded(host) else { return nil }
    return (decodedHost.isEmpty ? nil : decodedHost, port)
  }

  /// `%XX` escapes decoded; nil for a malformed escape or invalid UTF-8.
  private static func percentDecoded(_ text: Substring) -> String? {
    guard text.contains("%") else { return String(text) }
    var bytes: [UInt8] = []
    var utf8 = text.utf8.makeIterator()
    while let byte = utf8.next() {
      guard byte == UInt8(ascii: "%") else {
        bytes.append(byte)
        continue
      }
      guard let high = utf8.next(), let low = utf8.next(),
        let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
      else { return nil }
      bytes.append(value)
    }
    return String(validating: bytes, as: UTF8.self)
  }
}
