#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// A command-line option parser with the behaviour of GNU `getopt_long` (glibc
/// 2.36), which QEMU's tools use and whose quirks their error messages expose.
///
/// The parser keeps glibc's visible state so that callers can reproduce what
/// QEMU prints: ``optind`` advances exactly as glibc's does (a short option is
/// counted when its last character is processed), and ``arguments`` is permuted
/// in place so that, once parsing ends, options come first and the operands
/// start at ``optind``. qemu-img prints `argv[optind - 1]` in its messages, so
/// both matter.
///
/// Supported: short options with required arguments (`c:`), clustered short
/// options (`-wq`), attached arguments (`-c5`), long options with `=value` or a
/// separate argument, unambiguous abbreviations of long options, `--` to end
/// options, permutation of operands (unless the option string starts with `+`
/// or `POSIXLY_CORRECT` is set), and silent mode (a leading `:`), in which a
/// missing argument is reported as ``Result/missingArgument`` instead of
/// ``Result/invalid`` and nothing is printed.
struct Getopt {
  /// Whether a long option takes an argument.
  enum ArgumentKind {
    case none
    case required
  }

  /// A long option: its name (without `--`), whether it takes an argument, and
  /// the key ``next()`` returns for it (a short option letter, or any string).
  struct LongOption {
    let name: String
    let argument: ArgumentKind
    let key: String

    init(_ name: String, _ argument: ArgumentKind = .none, key: String? = nil) {
      self.name = name
      self.argument = argument
      self.key = key ?? name
    }
  }

  /// What one call of ``next()`` found.
  enum Result: Equatable {
    /// An option, by key (the letter of a short option, the key of a long one).
    case option(String)
    /// An unknown option, an ambiguous abbreviation, an argument given to an
    /// option that takes none, or (outside silent mode) a missing argument:
    /// glibc's `'?'`.
    case invalid
    /// A missing argument in silent mode: glibc's `':'`.
    case missingArgument
  }

  /// The arguments, `arguments[0]` being the program (or command) name;
  /// permuted in place while parsing.
  private(set) var arguments: [String]
  /// The index of the next argument to look at (glibc's `optind`).
  private(set) var optind = 1
  /// The argument of the option just returned (glibc's `optarg`).
  private(set) var optarg: String?
  /// The option character that caused the last error, or 0 (glibc's `optopt`).
  private(set) var optopt: Character?

  private let shortOptions: [Character]
  private let longOptions: [LongOption]
  private let silent: Bool
  private let permute: Bool
  private let report: (String) -> Void
  /// The unprocessed characters of the current clustered short option argument.
  private var nextChars: ArraySlice<Character> = []
  private var firstNonOption = 1
  private var lastNonOption = 1

  /// Creates a parser. `options` is a getopt option string (`"hf:c:"`, with an
  /// optional leading `+` and/or `:`); `report` receives glibc's error messages
  /// (each ending in a newline) unless the string asks for silence. As in glibc,
  /// `POSIXLY_CORRECT` in `environment` (by default the process's) turns off
  /// permutation.
  init(
    arguments: [String], options: String, longOptions: [LongOption] = [],
    environment: [String: String]? = nil, report: @escaping (String) -> Void
  ) {
    var spec = Array(options)
    var requireOrder =
      environment.map { $0["POSIXLY_CORRECT"] != nil } ?? (getenv("POSIXLY_CORRECT") != nil)
    if spec.first == "+" {
      requireOrder = true
      spec.removeFirst()
    } else if spec.first == "-" {
      // RETURN_IN_ORDER is not used by QEMU's tools; treat it as permuting.
      spec.removeFirst()
    }
    silent = spec.first == ":"
    shortOptions = spec
    self.longOptions = longOptions
    self.arguments = arguments
    permute = !requireOrder
    self.report = report
  }

  /// The operands left once ``next()`` returned nil.
  var operands: ArraySlice<String> { arguments[min(optind, arguments.count)...] }

  private func isNonOption(_ argument: String) -> Bool {
    argument.first != "-" || argument.count == 1
  }

  /// Moves the skipped operands `[firstNonOption, lastNonOption)` after the
  /// options `[lastNonOption, optind)` that followed them.
  private mutating func exchange() {
    let operands = arguments[firstNonOption..<lastNonOption]
    let options = arguments[lastNonOption..<optind]
    arguments.replaceSubrange(firstNonOption..<optind, with: Array(options) + Array(operands))
    firstNonOption += optind - lastNonOption
    lastNonOption = optind
  }

  /// The next option, or nil when options are exhausted; ``operands`` then
  /// holds the remaining arguments.
  mutating func next() -> Result? {
    optarg = nil
    let count = arguments.count
    if nextChars.isEmpty {
      if lastNonOption > optind { lastNonOption = optind }
      if firstNonOption > optind { firstNonOption = optind }
      if permute {
        if firstNonOption != lastNonOption && lastNonOption != optind {
          exchange()
        } else if lastNonOption != optind {
          firstNonOption = optind
        }
        while optind < count && isNonOption(arguments[optind]) { optind += 1 }
        lastNonOption = optind
      }
      if optind != count && arguments[optind] == "--" {
        optind += 1
        if firstNonOption != lastNonOption && lastNonOption != optind {
          exchange()
        } else if firstNonOption == lastNonOption {
          firstNonOption = optind
        }
        lastNonOption = count
        optind = count
      }
      if optind == count {
        if firstNonOption != lastNonOption { optind = firstNonOption }
        return nil
      }
      if isNonOption(arguments[optind]) {
        // Only reached without permutation: stop at the first operand.
        return nil
      }
      let argument = Array(arguments[optind])
      if argument[1] == "-" && !longOptions.isEmpty {
        return longOption(Array(argument.dropFirst(2)))
      }
      nextChars = argument.dropFirst()
    }
    return shortOption()
  }

  private mutating func shortOption() -> Result {
    let character = nextChars.removeFirst()
    if nextChars.isEmpty { optind += 1 }
    let index = shortOptions.firstIndex(of: character)
    guard let index, character != ":", character != ";" else {
      if !silent {
        report("\(arguments[0]): invalid option -- '\(character)'\n")
      }
      optopt = character
      return .invalid
    }
    let takesArgument = index + 1 < shortOptions.count && shortOptions[index + 1] == ":"
    if takesArgument {
      if !nextChars.isEmpty {
        optarg = String(nextChars)
        optind += 1
      } else if optind == arguments.count {
        if !silent {
          report("\(arguments[0]): option requires an argument -- '\(character)'\n")
        }
        optopt = character
        nextChars = []
        return silent ? .missingArgument : .invalid
      } else {
        optarg = arguments[optind]
        optind += 1
      }
      nextChars = []
    }
    return .option(String(character))
  }

  private mutating func longOption(_ text: [Character]) -> Result {
    let nameEnd = text.firstIndex(of: "=") ?? text.count
    let name = String(text[..<nameEnd])
    let whole = String(text)
    var found = longOptions.firstIndex { $0.name == name }
    if found == nil {
      let candidates = longOptions.indices.filter { longOptions[$0].name.hasPrefix(name) }
      if let first = candidates.first {
        let ambiguous = candidates.contains {
          longOptions[$0].argument != longOptions[first].argument
            || longOptions[$0].key != longOptions[first].key
        }
        if ambiguous {
          if !silent {
            let names = candidates.map { " '--\(longOptions[$0].name)'" }.joined()
            report("\(arguments[0]): option '--\(whole)' is ambiguous; possibilities:\(names)\n")
          }
          nextChars = []
          optind += 1
          optopt = nil
          return .invalid
        }
        found = first
      }
    }
    guard let found else {
      if !silent { report("\(arguments[0]): unrecognized option '--\(whole)'\n") }
      nextChars = []
      optind += 1
      optopt = nil
      return .invalid
    }
    let option = longOptions[found]
    optind += 1
    nextChars = []
    if nameEnd < text.count {
      guard option.argument == .required else {
        if !silent {
          report("\(arguments[0]): option '--\(option.name)' doesn't allow an argument\n")
        }
        optopt = option.key.count == 1 ? option.key.first : nil
        return .invalid
      }
      optarg = String(text[(nameEnd + 1)...])
    } else if option.argument == .required {
      if optind < arguments.count {
        optarg = arguments[optind]
        optind += 1
      } else {
        if !silent {
          report("\(arguments[0]): option '--\(option.name)' requires an argument\n")
        }
        optopt = option.key.count == 1 ? option.key.first : nil
        return silent ? .missingArgument : .invalid
      }
    }
    return .option(option.key)
  }
}
