/// A value as QEMU's QObject layer holds it, printed as QEMU's
/// `qobject_to_json_pretty` prints it: four spaces per level, `"key": value`,
/// members in the order given (QEMU's order is its QDict's hash order; callers
/// list keys in that order), strings escaped as QEMU escapes them.
indirect enum QObject: Equatable {
  case int(Int64)
  case bool(Bool)
  case string(String)
  case dict([(String, QObject)])
  case list([QObject])

  static func == (lhs: QObject, rhs: QObject) -> Bool {
    lhs.prettyJSON() == rhs.prettyJSON()
  }

  /// The pretty JSON text (no trailing newline).
  func prettyJSON(level: Int = 0) -> String {
    let indent = String(repeating: " ", count: 4 * (level + 1))
    let closing = String(repeating: " ", count: 4 * level)
    switch self {
    case .int(let value): return String(value)
    case .bool(let value): return value ? "true" : "false"
    case .string(let value): return Self.quoted(value)
    case .dict(let members):
      // As for lists: QEMU breaks the line in an empty dict too (rbd's
      // empty format-specific data prints as "{", a newline, "}").
      if members.isEmpty { return "{\n\(closing)}" }
      let body = members.map {
        "\(indent)\(Self.quoted($0.0)): \($0.1.prettyJSON(level: level + 1))"
      }
      return "{\n\(body.joined(separator: ",\n"))\n\(closing)}"
    case .list(let elements):
      // QEMU's JSON writer breaks the line even in an empty list.
      if elements.isEmpty { return "[\n\(closing)]" }
      let body = elements.map { "\(indent)\($0.prettyJSON(level: level + 1))" }
      return "[\n\(body.joined(separator: ",\n"))\n\(closing)]"
    }
  }

  /// QEMU's `to_json` string escaping: `"`, `\` and the usual control
  /// characters by name, other characters below 0x20 or from 0x7f on as
  /// `\uXXXX` (UTF-16, upper-case hex).
  static func quoted(_ text: String) -> String {
    var result = "\""
    for scalar in text.unicodeScalars {
      switch scalar {
      case "\"": result += "\\\""
      case "\\": result += "\\\\"
      case "\u{08}": result += "\\b"
      case "\u{0C}": result += "\\f"
      case "\n": result += "\\n"
      case "\r": result += "\\r"
      case "\t": result += "\\t"
      default:
        if scalar.value < 0x20 || scalar.value >= 0x7f {
          for unit in String(scalar).utf16 { result += cFormat("\\u%04X", UInt32(unit)) }
        } else {
          result.unicodeScalars.append(scalar)
        }
      }
    }
    return result + "\""
  }
}
