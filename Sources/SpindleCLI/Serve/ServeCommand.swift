import BlockCore
import NBD

/// `spindle serve` / a link named `qemu-nbd`: qemu-nbd 7.2's command line,
/// serving one image over NBD through the engine.
///
/// Every qemu-nbd 7.2 option (TLS through swift-nio-ssl), socket activation
/// (LISTEN_PID/LISTEN_FDS), QEMU 9.1's --handshake-limit and Spindle's
/// --max-requests. -L lists another
/// server's exports (``ServeList``), --fork serves from a daemon
/// (``ServeDaemon``); -c and -d reach the kernel's NBD devices only as far as
/// their errors (``ServeDevice``).
@BlockActor
enum ServeCommand {
  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("version", key: "V"), .init("bind", .required, key: "b"),
    .init("port", .required, key: "p"), .init("socket", .required, key: "k"),
    .init("offset", .required, key: "o"), .init("read-only", key: "r"),
    .init("allocation-depth", key: "A"), .init("bitmap", .required, key: "B"),
    .init("connect", .required, key: "c"), .init("disconnect", key: "d"),
    .init("list", key: "L"), .init("snapshot", key: "s"),
    .init("load-snapshot", .required, key: "l"), .init("nocache", key: "n"),
    .init("cache", .required), .init("aio", .required), .init("discard", .required),
    .init("detect-zeroes", .required), .init("shared", .required, key: "e"),
    .init("format", .required, key: "f"), .init("persistent", key: "t"),
    .init("verbose", key: "v"), .init("object", .required),
    .init("export-name", .required, key: "x"), .init("description", .required, key: "D"),
    .init("tls-creds", .required), .init("tls-hostname", .required),
    .init("tls-authz", .required), .init("image-opts"), .init("trace", .required, key: "T"),
    .init("fork"), .init("pid-file", .required), .init("selinux-label", .required),
    .init("handshake-limit", .required), .init("max-requests", .required),
  ]

  /// Options of qemu-nbd 7.2 that Spindle does not implement yet, by key.
  static let unsupported: [String: String] = [:]

  /// What parsing decided: serve (or list, ...), or exit at once.
  enum Parsed {
    case serve(ServeOptions)
    case exit(Int32)
  }

  /// The command line parsed, each option checked as qemu-nbd checks it
  /// while parsing; nil after an error was reported.
  static func parse(_ arguments: [String], reporter: Reporter, console: Console)
    -> Parsed?
  {
    var options = ServeOptions()
    // glibc's messages and the pointer to --help name the program as invoked.
    let invokedAs = arguments.first ?? "qemu-nbd"
    let tryHelp = "Try `\(invokedAs) --help' for more information."
    var parser = Getopt(
      arguments: [invokedAs] + arguments.dropFirst(),
      options: "hVb:o:p:rsnc:dvk:e:f:tl:x:T:D:AB:L", longOptions: longOptions
    ) { console.writeError($0) }
    var cacheGiven = false
    var aioGiven = false
    var discardGiven = false
    while let result = parser.next() {
      guard case .option(let key) = result else {
        reporter.error(tryHelp)
        return nil
      }
      let argument = parser.optarg ?? ""
      if let name = unsupported[key] {
        reporter.error("\(name) is not supported by Spindle yet")
        return nil
      }
      switch key {
      case "h":
        console.write(ServeHelp.text)
        return .exit(0)
      case "V":
        console.write("qemu-nbd 7.2.0 (spindle \(Spindle.version))\nWritten by Anthony Liguori.\n")
        return .exit(0)
      case "L": options.list = true
      case "fork": options.fork = true
      case "v": options.verbose = true
      case "c":
        options.device = argument
        options.deviceSettingsGiven = true
      case "d":
        options.disconnect = true
        options.deviceSettingsGiven = true
      case "selinux-label": options.selinuxLabel = argument
      case "T":
        guard let request = parseTraceOption(argument, reporter: reporter, recognizesHelp: true)
        else { return nil }
        // Spindle has no trace events: the list is empty.
        if request.wantsHelp { return .exit(0) }
        if let file = request.logFile { options.traceLogFile = file }
      case "object":
        do {
          try options.objects.add(argument, reporter: reporter, console: console)
        } catch {
          return .exit(error.status)
        }
      case "b": options.bindAddress = argument
      case "p": options.port = argument
      case "k":
        guard argument.hasPrefix("/") else {
          reporter.error("socket path must be absolute")
          return nil
        }
        options.socketPath = argument
      case "r": options.readOnly = true
      case "o":
        guard let offset = parseCUInt64(argument) else {
          reporter.error("Invalid offset '\(argument)'")
          return nil
        }
        options.offset = offset
        if offset != 0 { options.deviceSettingsGiven = true }
      case "A":
        options.allocationDepth = true
        options.deviceSettingsGiven = true
      case "B":
        options.bitmaps.insert(argument, at: 0)  // qemu-nbd prepends
        options.deviceSettingsGiven = true
      case "s": options.temporaryOverlay = true
      case "l":
        guard
          let snapshot = InternalSnapshotOption.parse(
            argument, reporter: reporter, openingQuote: "`")
        else { return nil }
        options.snapshot = snapshot
        options.readOnly = true  // -l implies -r
        // Only the plain form counts for -L (QEMU's `sn_id_or_name`).
        if snapshot.isPlainName { options.deviceSettingsGiven = true }
      case "n", "cache":
        if cacheGiven {
          reporter.error("-n and --cache can only be specified once")
          return nil
        }
        cacheGiven = true
        options.deviceSettingsGiven = true
        let text = key == "n" ? "none" : argument
        guard let mode = parseCacheMode(text) else {
          reporter.error("Invalid cache mode `\(argument)'")
          return nil
        }
        options.cache = mode
      case "aio":
        if aioGiven {
          reporter.error("--aio can only be specified once")
          return nil
        }
        aioGiven = true
        options.deviceSettingsGiven = true
        guard isValidAIOMode(argument) else {
          reporter.error("Invalid aio mode '\(argument)'")
          return nil
        }
        options.aio = argument
      case "discard":
        if discardGiven {
          reporter.error("--discard can only be specified once")
          return nil
        }
        discardGiven = true
        options.deviceSettingsGiven = true
        guard let mode = parseDiscardMode(argument) else {
          reporter.error("Invalid discard mode `\(argument)'")
          return nil
        }
        options.discard = mode
      case "detect-zeroes":
        guard let mode = DetectZeroesMode(rawValue: argument) else {
          reporter.error(
            "Failed to parse detect_zeroes mode: invalid parameter value: \(argument)")
          return nil
        }
        if mode == .unmap && options.discard != .unmap {
          reporter.error(
            "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap"
          )
          return nil
        }
        options.detectZeroes = mode
      case "e":
        guard let shared = parseCInt(argument), shared >= 0 else {
          reporter.error("Invalid shared device number '\(argument)'")
          return nil
        }
        options.shared = shared
      case "f":
        options.format = argument
        options.deviceSettingsGiven = true
      case "t": options.persistent = true
      case "x":
        guard argument.utf8.count <= 4096 else {
          reporter.error("export name '\(argument)' too long")
          return nil
        }
        options.exportName = argument
        options.deviceSettingsGiven = true
      case "D":
        guard argument.utf8.count <= 4096 else {
          reporter.error("export description '\(argument)' too long")
          return nil
        }
        options.description = argument
        options.deviceSettingsGiven = true
      case "image-opts": options.imageOpts = true
      case "tls-creds": options.tlsCreds = argument
      case "tls-authz": options.tlsAuthz = argument
      case "tls-hostname": options.tlsHostname = argument
      case "pid-file": options.pidFile = argument
      case "handshake-limit":
        // QEMU 9.1's option (CVE-2024-7409); qemu-nbd 7.2 has no limit.
        guard let seconds = parseCInt(argument), seconds >= 0 else {
          reporter.error("Invalid handshake limit '\(argument)'")
          return nil
        }
        options.handshakeLimit = seconds
      case "max-requests":
        // Spindle's: requests in flight per connection (qemu-nbd 7.2: 16).
        guard let count = parseCInt(argument), (1...1024).contains(count) else {
          reporter.error("Invalid request limit '\(argument)' (1 to 1024)")
          return nil
        }
        options.maxRequests = count
      default:
        reporter.error(tryHelp)
        return nil
      }
    }
    options.operands = Array(parser.operands)
    return .serve(options)
  }

  /// `qemu_strtou64` with base 0: decimal, 0x hex or 0 octal, the whole
  /// text, after optional blanks and a sign (a minus negates modulo 2^64,
  /// as `strtoull`).
  private static func parseCUInt64(_ text: String) -> UInt64? {
    var rest = Substring(text.drop { $0 == " " || $0 == "\t" || $0 == "\n" })
    var negative = false
    if let sign = rest.first, sign == "-" || sign == "+" {
      negative = sign == "-"
      rest = rest.dropFirst()
    }
    let value: UInt64?
    if rest.hasPrefix("0x") || rest.hasPrefix("0X") {
      value = UInt64(rest.dropFirst(2), radix: 16)
    } else if rest.hasPrefix("0") && rest.count > 1 {
      value = UInt64(rest.dropFirst(), radix: 8)
    } else {
      value = UInt64(rest)
    }
    guard let value, !rest.hasPrefix("+"), !rest.hasPrefix("-") else { return nil }
    return negative ? 0 &- value : value
  }

  /// `qemu_strtoi` with base 0: decimal, 0x hex or 0 octal, the whole text.
  private static func parseCInt(_ text: String) -> Int? {
    let value: Int?
    if text.hasPrefix("0x") || text.hasPrefix("0X") {
      value = Int(text.dropFirst(2), radix: 16)
    } else if text.hasPrefix("0") && text.count > 1 {
      value = Int(text.dropFirst(), radix: 8)
    } else {
      value = Int(text)
    }
    guard let value, value <= Int(Int32.max), value >= Int(Int32.min) else { return nil }
    return value
  }
}
