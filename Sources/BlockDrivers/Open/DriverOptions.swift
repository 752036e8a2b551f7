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

  /// Parses QEMU's `key=value,key=value` syntax, where `,,` is a literal comma.
  /// A bare first element without `=` is stored under `impliedKey` when given.
  public static func parse(_ text: String, impliedKey: String? = nil) throws -> DriverOptions {
    var result: [String: String] = [:]
    var elements: [String] = []
    var current = ""
    var iterator = Array(text).makeIterator()
    while let character = iterator.next() {
      if character == "," {
        // Within values ",," is an escaped comma.
        if let next = iterator.next() {
          if next == "," {
            current.append(",")
          } else {
            elements.append(current)
            current = String(next)
          }
        } else {
          elements.append(current)
          current = ""
        }
      } else {
        current.append(character)
      }
    }
    elements.append(current)
    for (index, element) in elements.enumerated() where !element.isEmpty {
      if let equals = element.firstIndex(of: "=") {
        result[String(element[..<equals])] = String(element[element.index(after: equals)...])
      } else if index == 0, let impliedKey {
        result[impliedKey] = element
      } else {
        throw BlockError(.invalidArgument, "Invalid parameter '\(element)'")
      }
    }
    return DriverOptions(result)
  }

  /// Parses a `json:{...}` pseudo-filename (the text after `json:`), flattening
  /// nested objects into dotted keys.
  public static func parseJSON(_ text: String) throws -> DriverOptions {
    guard let data = text.data(using: .utf8),
      case .object(let members)? = try? JSONDecoder().decode(JSONValue.self, from: data)
    else {
      throw BlockError(.invalidArgument, "Could not parse the JSON options")
    }
    var result: [String: String] = [:]
    func flatten(_ value: JSONValue, _ prefix: String) {
      switch value {
      case .object(let nested):
        for (key, inner) in nested { flatten(inner, prefix.isEmpty ? key : "\(prefix).\(key)") }
      case .array(let items):
        for (index, inner) in items.enumerated() { flatten(inner, "\(prefix).\(index)") }
      case .bool(let flag): result[prefix] = flag ? "on" : "off"
      case .number(let text), .string(let text): result[prefix] = text
      case .null:
        // `"backing": null` means no backing file; other nulls are absent.
        if prefix == "backing" || prefix.hasSuffix(".backing") { result[prefix] = "" }
      }
    }
    flatten(.object(members), "")
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

/// A JSON value as QEMU's option parser sees it: numbers keep their text.
private enum JSONValue: Decodable {
  case object([String: JSONValue])
  case array([JSONValue])
  case string(String)
  case number(String)
  case bool(Bool)
  case null

  init(from decoder: Decoder) throws {
    let container = try decoder.singleValueContainer()
    if container.decodeNil() {
      self = .null
    } else if let flag = try? container.decode(Bool.self) {
      self = .bool(flag)
    } else if let integer = try? container.decode(Int64.self) {
      self = .number(String(integer))
    } else if let number = try? container.decode(Double.self) {
      self = .number(String(number))
    } else if let string = try? container.decode(String.self) {
      self = .string(string)
    } else if let array = try? container.decode([JSONValue].self) {
      self = .array(array)
    } else {
      self = .object(try container.decode([String: JSONValue].self))
    }
  }
}
