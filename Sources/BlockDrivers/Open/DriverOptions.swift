import BlockCore
import Foundation

/// A flat set of driver options with QEMU's dotted keys (`driver`,
/// `file.filename`, `size`, ...), as parsed from an option string
/// (`driver=null-co,size=1G`) or a `json:{...}` pseudo-filename.
public struct DriverOptions: Sendable, Equatable {
  /// The options, by dotted key.
  public var values: [String: String]

  /// Options from a dictionary.
  public init(_ values: [String: String] = [:]) { self.values = values }

  /// Parses QEMU's `key=value,key=value` syntax as QEMU's `opts_do_parse`
  /// does: a key ends at the first `=` or `,` (keys hold no commas), a value
  /// ends at a single `,` and `,,` in a value is a literal comma. Empty
  /// elements are skipped. A bare first element without `=` is the value of
  /// `impliedKey` when given (commas escaped as in values); any other bare
  /// element is an invalid parameter. QEMU's option strings are C strings:
  /// the text ends at its first NUL.
  public static func parse(_ text: String, impliedKey: String? = nil) throws -> DriverOptions {
    var result: [String: String] = [:]
    let bytes = Array(text.utf8.prefix { $0 != 0 })
    var position = 0
    var isFirst = true
    while position < bytes.count {
      var nameEnd = position
      while nameEnd < bytes.count, bytes[nameEnd] != UInt8(ascii: "="),
        bytes[nameEnd] != UInt8(ascii: ",")
      {
        nameEnd += 1
      }
      let name = String(decoding: bytes[position..<nameEnd], as: UTF8.self)
      if nameEnd < bytes.count, bytes[nameEnd] == UInt8(ascii: "=") {
        let (value, next) = optionValue(bytes, from: nameEnd + 1)
        result[name] = value
        position = next
      } else if isFirst, let impliedKey {
        let (value, next) = optionValue(bytes, from: position)
        result[impliedKey] = value
        position = next
      } else if name.isEmpty {
        position = nameEnd + 1
      } else {
        throw BlockError(.invalidArgument, "Invalid parameter '\(name)'")
      }
      isFirst = false
    }
    return DriverOptions(result)
  }

  /// The value starting at `start` up to a single comma, `,,` read as a
  /// literal comma (QEMU's `get_opt_value`), and the position after the
  /// comma that ended it.
  private static func optionValue(_ bytes: [UInt8], from start: Int) -> (String, Int) {
    var value: [UInt8] = []
    var position = start
    while position < bytes.count {
      let byte = bytes[position]
      if byte == UInt8(ascii: ",") {
        if position + 1 < bytes.count, bytes[position + 1] == UInt8(ascii: ",") {
          value.append(byte)
          position += 2
          continue
        }
        return (String(decoding: value, as: UTF8.self), position + 1)
      }
      value.append(byte)
      position += 1
    }
    return (String(decoding: value, as: UTF8.self), position)
  }

  /// Parses a `json:{...}` pseudo-filename (the text after `json:`) with
  /// QEMU's JSON reader (``QEMUJSON``: single-quoted strings and QEMU's
  /// escapes are accepted) and flattens nested objects into dotted keys, as
  /// QEMU's `parse_json_filename` does. Scalars become the option strings
  /// QEMU makes of them (`qemu_opts_absorb_qdict`): `on`/`off` for booleans,
  /// integers in decimal, other numbers as `%.17g`.
  public static func parseJSON(_ text: String) throws -> DriverOptions {
    let value: QEMUJSONValue
    do {
      value = try QEMUJSON.parse(text)
    } catch {
      throw BlockError(.invalidArgument, "Could not parse the JSON options: \(error.message)")
    }
    guard case .object = value else {
      throw BlockError(.invalidArgument, "Invalid JSON object given")
    }
    var result: [String: String] = [:]
    func flatten(_ value: QEMUJSONValue, _ prefix: String) {
      switch value {
      case .object(let nested):
        for (key, inner) in nested { flatten(inner, prefix.isEmpty ? key : "\(prefix).\(key)") }
      case .array(let items):
        for (index, inner) in items.enumerated() { flatten(inner, "\(prefix).\(index)") }
      case .bool(let flag): result[prefix] = flag ? "on" : "off"
      case .int(let number): result[prefix] = String(number)
      case .uint(let number): result[prefix] = String(number)
      case .double(let number): result[prefix] = String(format: "%.17g", number)
      case .string(let text): result[prefix] = text
      case .null:
        // `"backing": null` means no backing file; other nulls are absent.
        if prefix == "backing" || prefix.hasSuffix(".backing") { result[prefix] = "" }
      }
    }
    flatten(value, "")
    return DriverOptions(result)
  }

  /// The value of a key, if present.
  public subscript(key: String) -> String? {
    get { values[key] }
    set { values[key] = newValue }
  }

  /// Removes and returns a key's value.
  public mutating func take(_ key: String) -> String? {
    values.removeValue(forKey: key)
  }

  /// Removes a boolean option (`on`/`off`, `true`/`false`, `yes`/`no`).
  public mutating func takeBool(_ key: String, default value: Bool) throws -> Bool {
    guard let text = take(key) else { return value }
    switch text {
    case "on", "true", "yes", "1": return true
    case "off", "false", "no", "0": return false
    default:
      throw BlockError(
        .invalidArgument, "Parameter '\(key)' expects 'on' or 'off'")
    }
  }

  /// Removes a size option (suffixes allowed).
  public mutating func takeSize(_ key: String) throws -> Int64? {
    guard let text = take(key) else { return nil }
    guard let size = parseSize(text) else {
      throw BlockError(
        .invalidArgument,
        "Parameter '\(key)' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively."
      )
    }
    return size
  }

  /// Removes an integer option.
  public mutating func takeInt(_ key: String) throws -> Int64? {
    guard let text = take(key) else { return nil }
    guard let value = Int64(text) else {
      throw BlockError(.invalidArgument, "Parameter '\(key)' expects a number")
    }
    return value
  }

  /// Removes and returns every key under `prefix.` with the prefix stripped.
  public mutating func takeChild(_ prefix: String) -> DriverOptions {
    var child: [String: String] = [:]
    for (key, value) in values where key.hasPrefix(prefix + ".") {
      child[String(key.dropFirst(prefix.count + 1))] = value
      values[key] = nil
    }
    return DriverOptions(child)
  }

  /// Whether no option is left.
  public var isEmpty: Bool { values.isEmpty }
}
