/// A JSON value as QEMU's QObject parser (`qobject_from_json`) reads it.
/// Numbers keep QEMU's three kinds: signed and unsigned 64-bit integers,
/// and doubles for everything else.
public indirect enum QEMUJSONValue: Sendable, Equatable {
  case object([(key: String, value: QEMUJSONValue)])
  case array([QEMUJSONValue])
  case string(String)
  case int(Int64)
  case uint(UInt64)
  case double(Double)
  case bool(Bool)
  case null

  public static func == (lhs: QEMUJSONValue, rhs: QEMUJSONValue) -> Bool {
    switch (lhs, rhs) {
    case (.object(let a), .object(let b)):
      a.count == b.count && zip(a, b).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    case (.array(let a), .array(let b)): a == b
    case (.string(let a), .string(let b)): a == b
    case (.int(let a), .int(let b)): a == b
    case (.uint(let a), .uint(let b)): a == b
    case (.double(let a), .double(let b)): a == b
    case (.bool(let a), .bool(let b)): a == b
    case (.null, .null): true
    default: false
    }
  }
}

/// A JSON text QEMU's parser rejects, with QEMU's message.
public struct QEMUJSONError: Error, Sendable, Equatable, CustomStringConvertible {
  /// QEMU's text (`JSON parse error, premature EOI`).
  public let message: String
  public var description: String { message }
}

/// QEMU 7.2's JSON reader (`qobject/json-lexer.c`, `json-streamer.c`,
/// `json-parser.c`): a superset of RFC 8259 that also accepts
/// single-quoted strings (which may hold unescaped `"`) and the escape `\'`;
/// rejects duplicate keys, control characters in strings and invalid
/// Unicode; and reports errors with QEMU's texts.
public enum QEMUJSON {
  /// Nesting QEMU refuses beyond (`MAX_NESTING`).
  static let maximumNesting = 1024

  /// Parses exactly one JSON value, as `qobject_from_json` does.
  public static func parse(_ text: String) throws(QEMUJSONError) -> QEMUJSONValue {
    var lexer = Lexer(Array(text.utf8))
    var result: QEMUJSONValue?
    var group: [Token] = []
    var depth = 0
    func emit(_ tokens: [Token]) throws(QEMUJSONError) {
      if result != nil { throw QEMUJSONError(message: "Expecting at most one JSON value") }
      var parser = Parser(tokens: tokens)
      result = try parser.value()
    }
    while true {
      let token: Token?
      do {
        token = try lexer.next()
      } catch {
        if result != nil { throw QEMUJSONError(message: "Expecting at most one JSON value") }
        throw error
      }
      guard let token else { break }
      switch token.kind {
      case .leftBrace, .leftBracket: depth += 1
      case .rightBrace, .rightBracket: depth -= 1
      default: break
      }
      group.append(token)
      if depth <= 0 {
        try emit(group)
        group = []
        depth = 0
      } else if depth > maximumNesting {
        if result != nil { throw QEMUJSONError(message: "Expecting at most one JSON value") }
        throw QEMUJSONError(message: "JSON nesting depth limit exceeded")
      }
    }
    if !group.isEmpty { try emit(group) }
    guard let result else { throw QEMUJSONError(message: "Expecting a JSON value") }
    return result
  }

  /// A lexical token and its text.
  struct Token {
    enum Kind { case leftBrace, rightBrace, leftBracket, rightBracket, comma, colon }
    enum Value {
      case punctuation(Kind)
      case string([UInt8])
      case integer(String)
      case float(String)
      case keyword(String)
    }
    let value: Value
    var kind: Kind? {
      if case .punctuation(let kind) = value { return kind }
      return nil
    }
  }

  /// QEMU's lexer: whitespace, punctuation, strings in either quotes,
  /// numbers (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`) and lower-case
  /// keywords. Anything else is "stray", reported with the token's text so
  /// far and the offending character.
  struct Lexer {
    let bytes: [UInt8]
    var index = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    private func peek(_ offset: Int = 0) -> UInt8? {
      index + offset < bytes.count ? bytes[index + offset] : nil
    }

    private func stray(from start: Int, through end: Int) -> QEMUJSONError {
      let text = String(decoding: bytes[start..<min(end + 1, bytes.count)], as: UTF8.self)
      return QEMUJSONError(message: "JSON parse error, stray '\(text)'")
    }

    private static func isDigit(_ byte: UInt8?) -> Bool {
      guard let byte else { return false }
      return byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
    }

    mutating func next() throws(QEMUJSONError) -> Token? {
      while let byte = peek(), [0x20, 0x09, 0x0D, 0x0A].contains(byte) { index += 1 }
      guard let byte = peek() else { return nil }
      let start = index
      let punctuation: [UInt8: Token.Kind] = [
        UInt8(ascii: "{"): .leftBrace, UInt8(ascii: "}"): .rightBrace,
        UInt8(ascii: "["): .leftBracket, UInt8(ascii: "]"): .rightBracket,
        UInt8(ascii: ","): .comma, UInt8(ascii: ":"): .colon,
      ]
      if let kind = punctuation[byte] {
        index += 1
        return Token(value: .punctuation(kind))
      }
      switch byte {
      case UInt8(ascii: "\""), UInt8(ascii: "'"):
        index += 1
        while true {
          guard let next = peek(), next >= 0x20, next <= 0xFD else {
            throw stray(from: start, through: index)
          }
          index += 1
          if next == byte { break }
          if next == UInt8(ascii: "\\") {
            guard let escaped = peek(), escaped >= 0x20, escaped <= 0xFD else {
              throw stray(from: start, through: index)
            }
            index += 1
          }
        }
        return Token(value: .string(Array(bytes[start..<index])))
      case UInt8(ascii: "a")...UInt8(ascii: "z"):
        while let next = peek(), next >= UInt8(ascii: "a"), next <= UInt8(ascii: "z") {
          index += 1
        }
        return Token(value: .keyword(String(decoding: bytes[start..<index], as: UTF8.self)))
      case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
        return try number(from: start)
      default:
        throw stray(from: start, through: start)
      }
    }

    private mutating func digits() {
      while Self.isDigit(peek()) { index += 1 }
    }

    /// A number; a malformed one is stray up to the character that broke it.
    private mutating func number(from start: Int) throws(QEMUJSONError) -> Token {
      var isFloat = false
      if peek() == UInt8(ascii: "-") { index += 1 }
      if peek() == UInt8(ascii: "0") {
        index += 1
        if Self.isDigit(peek()) { throw stray(from: start, through: index) }
      } else if Self.isDigit(peek()) {
        digits()
      } else {
        throw stray(from: start, through: index)
      }
      if peek() == UInt8(ascii: ".") {
        isFloat = true
        index += 1
        guard Self.isDigit(peek()) else { throw stray(from: start, through: index) }
        digits()
      }
      if peek() == UInt8(ascii: "e") || peek() == UInt8(ascii: "E") {
        isFloat = true
        index += 1
        if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { index += 1 }
        guard Self.isDigit(peek()) else { throw stray(from: start, through: index) }
        digits()
      }
      let text = String(decoding: bytes[start..<index], as: UTF8.self)
      return Token(value: isFloat ? .float(text) : .integer(text))
    }
  }

  /// QEMU's recursive-descent parser over one value's tokens.
  struct Parser {
    let tokens: [Token]
    var index = 0

    init(tokens: [Token]) { self.tokens = tokens }

    private static func error(_ message: String) -> QEMUJSONError {
      QEMUJSONError(message: "JSON parse error, \(message)")
    }

    private mutating func pop() throws(QEMUJSONError) -> Token {
      guard index < tokens.count else { throw Self.error("premature EOI") }
      index += 1
      return tokens[index - 1]
    }

    mutating func value() throws(QEMUJSONError) -> QEMUJSONValue {
      guard index < tokens.count else { throw Self.error("premature EOI") }
      let token = tokens[index]
      switch token.value {
      case .punctuation(.leftBrace): return try object()
      case .punctuation(.leftBracket): return try array()
      case .punctuation: throw Self.error("expecting value")
      case .string(let raw):
        index += 1
        return .string(try Self.unescape(raw))
      case .integer(let text):
        index += 1
        if let value = Int64(text) { return .int(value) }
        if !text.hasPrefix("-"), let value = UInt64(text) { return .uint(value) }
        return .double(Double(text) ?? 0)
      case .float(let text):
        index += 1
        return .double(Double(text) ?? 0)
      case .keyword(let word):
        index += 1
        switch word {
        case "true": return .bool(true)
        case "false": return .bool(false)
        case "null": return .null
        default: throw Self.error("invalid keyword '\(word)'")
        }
      }
    }

    private mutating func object() throws(QEMUJSONError) -> QEMUJSONValue {
      _ = try pop()
      var members: [(key: String, value: QEMUJSONValue)] = []
      guard index < tokens.count else { throw Self.error("premature EOI") }
      if tokens[index].kind == .rightBrace {
        index += 1
        return .object(members)
      }
      while true {
        guard index < tokens.count else { throw Self.error("premature EOI") }
        guard case .string(let key) = try value() else {
          throw Self.error("key is not a string in object")
        }
        guard try pop().kind == .colon else { throw Self.error("missing : in object pair") }
        let member = try value()
        if members.contains(where: { $0.key == key }) { throw Self.error("duplicate key") }
        members.append((key, member))
        let separator = try pop()
        if separator.kind == .rightBrace { return .object(members) }
        guard separator.kind == .comma else { throw Self.error("expected separator in dict") }
      }
    }

    private mutating func array() throws(QEMUJSONError) -> QEMUJSONValue {
      _ = try pop()
      var elements: [QEMUJSONValue] = []
      guard index < tokens.count else { throw Self.error("premature EOI") }
      if tokens[index].kind == .rightBracket {
        index += 1
        return .array(elements)
      }
      while true {
        elements.append(try value())
        let separator = try pop()
        if separator.kind == .rightBracket { return .array(elements) }
        guard separator.kind == .comma else { throw Self.error("expected separator in list") }
      }
    }

    /// QEMU's `parse_string`: the escapes of RFC 8259 plus `\'`, UTF-16
    /// surrogate pairs in `\u` escapes, and only valid Unicode characters.
    static func unescape(_ raw: [UInt8]) throws(QEMUJSONError) -> String {
      var scalars = String.UnicodeScalarView()
      var index = 1
      let end = raw.count - 1
      func validScalar(_ value: Int) -> Unicode.Scalar? {
        let isNonCharacter = (0xFDD0...0xFDEF).contains(value) || value & 0xFFFE == 0xFFFE
        guard value >= 0, value <= 0x10FFFF, !isNonCharacter else { return nil }
        return Unicode.Scalar(UInt32(value))
      }
      func hex4(_ at: Int) -> Int {
        guard at + 4 <= end else { return -1 }
        var value = 0
        for byte in raw[at..<at + 4] {
          guard let digit = Int(String(UnicodeScalar(byte)), radix: 16) else { return -1 }
          value = value << 4 | digit
        }
        return value
      }
      while index < end {
        let byte = raw[index]
        if byte == UInt8(ascii: "\\") {
          let begin = index
          let escaped = raw[index + 1]
          index += 2
          let simple: [UInt8: Unicode.Scalar] = [
            UInt8(ascii: "\""): "\"", UInt8(ascii: "'"): "'", UInt8(ascii: "\\"): "\\",
            UInt8(ascii: "/"): "/", UInt8(ascii: "b"): "\u{08}", UInt8(ascii: "f"): "\u{0C}",
            UInt8(ascii: "n"): "\n", UInt8(ascii: "r"): "\r", UInt8(ascii: "t"): "\t",
          ]
          if let scalar = simple[escaped] {
            scalars.append(scalar)
            continue
          }
          guard escaped == UInt8(ascii: "u") else {
            throw error("invalid escape sequence in string")
          }
          var codePoint = hex4(index)
          index += 4
          if (0xD800...0xDBFF).contains(codePoint), index + 1 < end,
            raw[index] == UInt8(ascii: "\\"), raw[index + 1] == UInt8(ascii: "u")
          {
            let trailing = hex4(index + 2)
            if (0xDC00...0xDFFF).contains(trailing) {
              codePoint = 0x10000 + ((codePoint & 0x3FF) << 10) | (trailing & 0x3FF)
              index += 6
            } else {
              codePoint = -1
            }
          }
          guard let scalar = validScalar(codePoint) else {
            let text = String(decoding: raw[begin..<min(index, raw.count)], as: UTF8.self)
            throw error("\(text) is not a valid Unicode character")
          }
          scalars.append(scalar)
          continue
        }
        // One UTF-8 encoded character.
        let length =
          switch byte {
          case 0x00..<0x80: 1
          case 0xC2..<0xE0: 2
          case 0xE0..<0xF0: 3
          case 0xF0..<0xF5: 4
          default: 0
          }
        guard length > 0, index + length <= end else {
          throw error("invalid UTF-8 sequence in string")
        }
        var decoder = UTF8()
        var iterator = raw[index..<index + length].makeIterator()
        guard case .scalarValue(let scalar) = decoder.decode(&iterator),
          validScalar(Int(scalar.value)) != nil
        else { throw error("invalid UTF-8 sequence in string") }
        scalars.append(scalar)
        index += length
      }
      return String(scalars)
    }
  }
}
