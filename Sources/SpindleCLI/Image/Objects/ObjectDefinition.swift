/// An `--object` argument split into its properties the way QEMU's
/// `keyval_parse` splits it with the implied key `qom-type`: `key=value`
/// pairs separated by commas, `,,` for a comma inside a value, a first
/// element without `=` naming the type, and `help` asking for help.
struct ObjectDefinition {
  /// Properties in the order given; a later repetition replaces the value.
  var properties: [(key: String, value: String)] = []
  /// `help` (or `?`) appeared as an element.
  var wantsHelp = false

  /// The value of `key`, the last one given.
  subscript(key: String) -> String? {
    properties.last { $0.key == key }?.value
  }

  /// Parses `text`, throwing QEMU's message for an element with an empty key.
  init(parsing text: String) throws(ObjectError) {
    guard !text.isEmpty else { return }
    var elements: [String] = []
    var current = ""
    var characters = text[...]
    while let character = characters.popFirst() {
      if character == "," {
        if characters.first == "," {
          characters.removeFirst()
          current.append(",")
        } else {
          elements.append(current)
          current = ""
        }
      } else {
        current.append(character)
      }
    }
    elements.append(current)
    // A trailing comma ends the list without adding an element.
    if text.hasSuffix(",") && !text.hasSuffix(",,") { elements.removeLast() }
    for (index, element) in elements.enumerated() {
      guard let equals = element.firstIndex(of: "=") else {
        if element == "help" || element == "?" {
          wantsHelp = true
        } else if index == 0 && !element.isEmpty {
          properties.append(("qom-type", element))
        } else {
          throw ObjectError("Invalid parameter '\(element)'")
        }
        continue
      }
      let key = String(element[..<equals])
      guard !key.isEmpty else { throw ObjectError("Invalid parameter ''") }
      properties.append((key, String(element[element.index(after: equals)...])))
    }
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
