/// The creation options qemu-img 7.2 knows for the formats Spindle creates
/// (QEMU's `QemuOptsList`s `qcow2_create_opts`, `raw_create_opts` and the file
/// protocol's `raw_create_opts`), their parsing and printing.
struct CreateOption: Sendable {
  enum Kind: Sendable {
    case size, number, string, bool

    /// How `-o help` names the type.
    var helpName: String {
      switch self {
      case .size: "size"
      case .number: "num"
      case .string: "str"
      case .bool: "bool (on/off)"
      }
    }
  }

  let name: String
  let kind: Kind
  let help: String
  /// The value printed in the `Formatting` line when the option is not given.
  var defaultValue: String? = nil
  /// Whether Spindle can honour the option (it is otherwise refused).
  var supported = true
}

/// An option list: a format's options merged with its protocol's, in the order
/// QEMU prints them in the `Formatting` line.
struct CreateOptionList: Sendable {
  let options: [CreateOption]

  static let qcow2Options: [CreateOption] = [
    .init(
      name: "encryption", kind: .bool,
      help: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
      supported: false),
    .init(
      name: "encrypt.format", kind: .string,
      help: "Encrypt the image, format choices: 'aes', 'luks'", supported: false),
    .init(
      name: "encrypt.key-secret", kind: .string,
      help: "ID of secret providing qcow AES key or LUKS passphrase", supported: false),
    .init(
      name: "encrypt.cipher-alg", kind: .string, help: "Name of encryption cipher algorithm",
      supported: false),
    .init(
      name: "encrypt.cipher-mode", kind: .string, help: "Name of encryption cipher mode",
      supported: false),
    .init(
      name: "encrypt.ivgen-alg", kind: .string, help: "Name of IV generator algorithm",
      supported: false),
    .init(
      name: "encrypt.ivgen-hash-alg", kind: .string, help: "Name of IV generator hash algorithm",
      supported: false),
    .init(
      name: "encrypt.hash-alg", kind: .string, help: "Name of encryption hash algorithm",
      supported: false),
    .init(
      name: "encrypt.iter-time", kind: .number,
      help: "Time to spend in PBKDF in milliseconds", supported: false),
    .init(name: "cluster_size", kind: .size, help: "qcow2 cluster size", defaultValue: "65536"),
    .init(name: "extended_l2", kind: .bool, help: "Extended L2 tables", defaultValue: "off"),
    .init(
      name: "preallocation", kind: .string,
      help: "Preallocation mode (allowed values: off, metadata, falloc, full)"),
    .init(
      name: "compression_type", kind: .string,
      help: "Compression method used for image cluster compression", defaultValue: "zlib"),
    .init(name: "size", kind: .size, help: "Virtual disk size"),
    .init(name: "compat", kind: .string, help: "Compatibility level (v2 [0.10] or v3 [1.1])"),
    .init(name: "backing_file", kind: .string, help: "File name of a base image"),
    .init(name: "backing_fmt", kind: .string, help: "Image format of the base image"),
    .init(
      name: "data_file", kind: .string, help: "File name of an external data file"),
    .init(
      name: "data_file_raw", kind: .bool,
      help: "The external data file must stay valid as a raw image"),
    .init(
      name: "lazy_refcounts", kind: .bool, help: "Postpone refcount updates", defaultValue: "off"),
    .init(
      name: "refcount_bits", kind: .number, help: "Width of a reference count entry in bits",
      defaultValue: "16"),
  ]

  static let rawOptions: [CreateOption] = [
    .init(name: "size", kind: .size, help: "Virtual disk size")
  ]

  /// The file protocol's options (QEMU's file-posix `raw_create_opts`).
  static let fileOptions: [CreateOption] = [
    .init(name: "size", kind: .size, help: "Virtual disk size"),
    .init(
      name: "nocow", kind: .bool, help: "Turn off copy-on-write (valid only on btrfs)"),
    .init(
      name: "preallocation", kind: .string,
      help: "Preallocation mode (allowed values: off, falloc, full)"),
    .init(
      name: "extent_size_hint", kind: .size,
      help: "Extent size hint for the image file, 0 to disable"),
  ]

  /// The rbd protocol's options (QEMU's `qemu_rbd_create_opts`).
  static let rbdOptions: [CreateOption] = [
    .init(name: "size", kind: .size, help: "Virtual disk size"),
    .init(name: "cluster_size", kind: .size, help: "RBD object size"),
    .init(
      name: "password-secret", kind: .string, help: "ID of secret providing the password",
      supported: false),
    .init(
      name: "encrypt.format", kind: .string,
      help: "Encrypt the image, format choices: 'luks', 'luks2'", supported: false),
    .init(
      name: "encrypt.cipher-alg", kind: .string,
      help: "Name of encryption cipher algorithm (allowed values: aes-128, aes-256)",
      supported: false),
    .init(
      name: "encrypt.key-secret", kind: .string, help: "ID of secret providing LUKS passphrase",
      supported: false),
  ]

  /// The options of `format` (`qcow2` or `raw`, or `rbd` on an `rbd:`
  /// filename), with the protocol's when `withProtocol` (QEMU's
  /// `qemu_opts_append`: later duplicates are dropped). `filename` selects
  /// the protocol: `rbd:` names are rbd's, others the file protocol's.
  static func forFormat(_ format: String, withProtocol: Bool, filename: String? = nil)
    -> CreateOptionList?
  {
    let isRBD = filename?.hasPrefix("rbd:") == true
    let own: [CreateOption]
    switch format {
    case "qcow2": own = qcow2Options
    case "raw": own = rawOptions
    case "rbd" where isRBD: own = rbdOptions
    default: return nil
    }
    guard withProtocol else { return CreateOptionList(options: own) }
    var merged = own
    for option in isRBD ? rbdOptions : fileOptions
    where !merged.contains(where: { $0.name == option.name }) {
      merged.append(option)
    }
    return CreateOptionList(options: merged)
  }

  /// QEMU's `qemu_opts_print_help`: the options sorted by name, each as
  /// `name=<type>` padded to 22 columns and its help.
  func helpText() -> String {
    options.sorted { $0.name < $1.name }.map { option in
      var left = "\(option.name)=<\(option.kind.helpName)>"
      if left.count < 22 { left += String(repeating: " ", count: 22 - left.count) }
      return "  \(left) - \(option.help)\n"
    }.joined()
  }
}

/// Parsed `-o` options: each value as given and, for numbers and sizes, as
/// parsed (QEMU's `QemuOpts`).
struct CreateOptionValues {
  /// What went wrong, with QEMU's wording (and hint lines).
  struct Failure: Error {
    let message: String
    /// Whether a newline ends the message (QEMU's hints may lack one).
    var newline = true
  }

  let list: CreateOptionList
  private(set) var text: [String: String] = [:]
  private(set) var numbers: [String: UInt64] = [:]

  init(list: CreateOptionList) { self.list = list }

  /// Whether an option list asks for help (QEMU's `has_help_option`).
  static func asksForHelp(_ options: String) -> Bool {
    splitOptionList(options).contains { $0.key == "help" || $0.key == "?" }
  }

  /// QEMU's `qemu_opts_do_parse` for `key=value,...` (`,,` escapes a comma; a
  /// bare key means `key=on`).
  mutating func parse(_ options: String) throws(Failure) {
    for (key, value) in Self.splitOptionList(options) {
      try set(key, value ?? "on")
    }
  }

  /// Sets one option after checking its value as QEMU's `qemu_opt_parse`.
  mutating func set(_ key: String, _ value: String) throws(Failure) {
    guard let option = list.options.first(where: { $0.name == key }) else {
      throw Failure(message: "Invalid parameter '\(key)'")
    }
    switch option.kind {
    case .size:
      let parsed = parseQEMUSize(value)
      if case .failure(.range) = parsed {
        throw Failure(message: "Value '\(value)' is out of range for parameter '\(key)'")
      }
      guard case .success(let size) = parsed else {
        throw Failure(
          message: """
            Parameter '\(key)' expects a non-negative number below 2^64
            Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-
            and exabytes, respectively.
            """)
      }
      numbers[key] = size.value
    case .number:
      let parsed = parseCUnsignedLong(value)
      if case .failure(.range) = parsed {
        throw Failure(message: "Value '\(value)' is too large for parameter '\(key)'")
      }
      guard case .success(let number) = parsed else {
        throw Failure(message: "Parameter '\(key)' expects a number")
      }
      numbers[key] = number
    case .bool:
      guard Self.parseBool(value) != nil else {
        throw Failure(message: "Parameter '\(key)' expects 'on' or 'off'")
      }
    case .string:
      break
    }
    text[key] = value
  }

  /// A number or size option (nil when not given).
  func number(_ key: String) -> UInt64? { numbers[key] }
  /// A string option as given.
  func string(_ key: String) -> String? { text[key] }
  /// A boolean option (nil when not given).
  func bool(_ key: String) -> Bool? { text[key].flatMap(Self.parseBool) }

  /// QEMU's `qapi_bool_parse`.
  static func parseBool(_ text: String) -> Bool? {
    switch text {
    case "on", "yes", "true", "y": true
    case "off", "no", "false", "n": false
    default: nil
    }
  }

  /// QEMU's `qemu_opts_print` with a space separator: every option given or
  /// with a default, numbers as parsed, strings with commas doubled.
  func printed() -> String {
    var parts: [String] = []
    for option in list.options {
      guard let value = text[option.name] ?? option.defaultValue else { continue }
      switch option.kind {
      case .string:
        parts.append("\(option.name)=\(value.replacing(",", with: ",,"))")
      case .size, .number:
        if let number = numbers[option.name] {
          parts.append("\(option.name)=\(Int64(bitPattern: number))")
        } else {
          parts.append("\(option.name)=\(value)")
        }
      case .bool:
        parts.append("\(option.name)=\(value)")
      }
    }
    return parts.joined(separator: " ")
  }

  /// Splits `key=value,key2,...` with `,,` as an escaped comma.
  static func splitOptionList(_ options: String) -> [(key: String, value: String?)] {
    var result: [(key: String, value: String?)] = []
    var characters = Array(options)[...]
    while !characters.isEmpty {
      var key = ""
      while let first = characters.first, first != "=", first != "," {
        key.append(first)
        characters.removeFirst()
      }
      var value: String?
      if characters.first == "=" {
        characters.removeFirst()
        var text = ""
        while let first = characters.first {
          if first == "," {
            if characters.dropFirst().first == "," {
              text.append(",")
              characters.removeFirst(2)
              continue
            }
            break
          }
          text.append(first)
          characters.removeFirst()
        }
        value = text
      }
      if characters.first == "," { characters.removeFirst() }
      result.append((key, value))
    }
    return result
  }
}
