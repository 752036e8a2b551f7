import BlockDrivers

/// An `--object` argument split into its properties the way QEMU's
/// `keyval_parse` splits it with the implied key `qom-type`: `key=value`
/// pairs separated by commas, `,,` for a comma inside a value, a first
/// element without `=` naming the type (up to the next comma), dotted keys
/// for nested members, and `help` (or `?`) asking for help.
struct ObjectDefinition {
  /// Properties in the order given; a later repetition replaces the value.
  var properties: [(key: String, value: String)] = []
  /// `help` (or `?`) appeared as an element.
  var wantsHelp = false

  /// The value of `key`, the last one given.
  subscript(key: String) -> String? {
    properties.last { $0.key == key }?.value
  }

  /// The first dotted key under `name` (`name.x`), if any.
  func nestedKey(under name: String) -> String? {
    properties.first { $0.key.hasPrefix(name + ".") }?.key
  }

  /// The top-level member names, in the order first given.
  var memberNames: [String] {
    var names: [String] = []
    for (key, _) in properties {
      let name = String(key.prefix { $0 != "." })
      if !names.contains(name) { names.append(name) }
    }
    return names
  }

  /// Parses a JSON object definition (`{"qom-type": "secret", ...}`); nested
  /// members become dotted keys, numbers and booleans their text.
  init(json text: String) throws(ObjectError) {
    guard let options = try? DriverOptions.parseJSON(text) else {
      throw ObjectError("JSON parse error in the object definition")
    }
    properties = options.values.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
  }

  /// Parses `text`, throwing QEMU's messages for malformed keys.
  init(parsing text: String) throws(ObjectError) {
    var rest = Substring(text)
    var first = true
    while !rest.isEmpty {
      let keyLength = rest.prefix { $0 != "=" && $0 != "," }.count
      let afterKey = rest.dropFirst(keyLength)
      if keyLength > 0 && afterKey.first != "=" {
        let word = rest.prefix(keyLength)
        if word == "help" || word == "?" {
          wantsHelp = true
          rest = afterKey.dropFirst()
          first = false
          continue
        }
        if first {
          try add("qom-type", String(word))
          rest = afterKey.dropFirst()
          first = false
          continue
        }
      }
      first = false
      let key = String(rest.prefix(keyLength))
      try Self.checkKey(key)
      guard afterKey.first == "=" else {
        throw ObjectError("Expected '=' after parameter '\(key)'")
      }
      var value = ""
      var cursor = afterKey.dropFirst()
      while let character = cursor.first {
        cursor = cursor.dropFirst()
        if character == "," {
          guard cursor.first == "," else { break }
          cursor = cursor.dropFirst()
        }
        value.append(character)
      }
      try add(key, value)
      rest = cursor
    }
  }

  /// Records `key`, refusing a name used both for a value and for nested
  /// members.
  private mutating func add(_ key: String, _ value: String) throws(ObjectError) {
    let fragments = key.split(separator: ".", omittingEmptySubsequences: false)
    for length in 1...fragments.count {
      let prefix = fragments.prefix(length).joined(separator: ".")
      let clash =
        length < fragments.count
        ? properties.contains { $0.key == prefix }
        : properties.contains { $0.key.hasPrefix(prefix + ".") }
      if clash { throw ObjectError("Parameters '\(prefix).*' used inconsistently") }
    }
    properties.append((key, value))
  }

  /// QEMU's key checks: dotted fragments, each a QAPI name shorter than 128
  /// bytes.
  private static func checkKey(_ key: String) throws(ObjectError) {
    let fragments = key.split(separator: ".", omittingEmptySubsequences: false)
    for fragment in fragments {
      let nameLength = qapiNameLength(fragment)
      guard nameLength > 0, nameLength == fragment.utf8.count else {
        throw ObjectError("Invalid parameter '\(key)'")
      }
      if nameLength >= 128 {
        let kind = fragments.count > 1 ? " fragment" : ""
        throw ObjectError("Parameter\(kind) '\(fragment)' is too long")
      }
    }
  }

  /// The length of the QAPI name (a letter, then letters, digits, `-`, `_`)
  /// at the start of `text`; 0 when there is none.
  private static func qapiNameLength(_ text: Substring) -> Int {
    let scalars = Array(text.unicodeScalars)
    guard let first = scalars.first, first.isASCII, first.properties.isAlphabetic else { return 0 }
    var length = 1
    while length < scalars.count, scalars[length].isASCII,
      scalars[length].properties.isAlphabetic || ("0"..."9").contains(scalars[length])
        || scalars[length] == "-" || scalars[length] == "_"
    {
      length += 1
    }
    return length
  }
}

/// A failure creating an object, with QEMU's message and optional hint line.
struct ObjectError: Error {
  /// The message `error_report` prints.
  var message: String
  /// A second line QEMU prints after the message, if any.
  var hint: String?

  /// Creates an error.
  init(_ message: String, hint: String? = nil) {
    self.message = message
    self.hint = hint
  }
}
