import BlockCore
import BlockDrivers

/// `qemu-img amend`, a qemu-img 7.2 work-alike:
///
///     amend [--object OBJECTDEF] [--image-opts] [-p] [-q] [-f FMT] [-t CACHE]
///           [--force] -o OPTIONS FILENAME
///
/// Parses the options against the format's amend options (QEMU's
/// `qcow2_amend_opts`; creation-only options get QEMU's hint), then lets
/// ``Qcow2Driver/amend(_:options:)`` apply them. Only qcow2 supports
/// amendment.
@BlockActor
enum AmendTool: ImageSubcommand {
  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("object", .required), .init("image-opts"), .init("force"),
  ]

  /// qcow2's amend options (QEMU's `qcow2_amend_opts`), in its order.
  static let qcow2AmendOptions: [CreateOption] = [
    .init(
      name: "encrypt.state", kind: .string,
      help: "Select new state of affected keyslots (active/inactive)"),
    .init(
      name: "encrypt.keyslot", kind: .number, help: "Select a single keyslot to modify explicitly"),
    .init(
      name: "encrypt.old-secret", kind: .string,
      help: "Select all keyslots that match this password"),
    .init(
      name: "encrypt.new-secret", kind: .string,
      help: "New secret to set in the matching keyslots. Empty string to erase"),
    .init(
      name: "encrypt.iter-time", kind: .number, help: "Time to spend in PBKDF in milliseconds"),
    .init(name: "size", kind: .size, help: "Virtual disk size"),
    .init(name: "compat", kind: .string, help: "Compatibility level (v2 [0.10] or v3 [1.1])"),
    .init(name: "backing_file", kind: .string, help: "File name of a base image"),
    .init(name: "backing_fmt", kind: .string, help: "Image format of the base image"),
    .init(name: "data_file", kind: .string, help: "File name of an external data file"),
    .init(
      name: "data_file_raw", kind: .bool,
      help: "The external data file must stay valid as a raw image"),
    .init(name: "lazy_refcounts", kind: .bool, help: "Postpone refcount updates"),
    .init(name: "refcount_bits", kind: .number, help: "Width of a reference count entry in bits"),
  ]

  /// Parses the options as qemu-img does, then runs the command.
  static func parseAndRun(_ arguments: [String], reporter: Reporter, console: Console)
    async throws -> Int32
  {
    var parser = Getopt(arguments: arguments, options: ":ho:f:t:pq", longOptions: longOptions) {
      _ in
    }
    var options: String?
    var format: String?
    var cache = "writeback"
    var progress = false
    var quiet = false
    var imageOpts = false
    var objects = ObjectRegistry()
    while let result = parser.next() {
      let argument = parser.optarg ?? ""
      switch result {
      case .missingArgument, .invalid, .option("h"):
        throw reporter.sharedOptionExit(result, parser, console: console)
      case .option("o"):
        guard isValidOptionList(argument) else {
          reporter.error("Invalid option list: \(argument)")
          throw CommandExit()
        }
        options = options.map { "\($0),\(argument)" } ?? argument
      case .option("f"): format = argument
      case .option("t"): cache = argument
      case .option("p"): progress = true
      case .option("q"): quiet = true
      case .option("force"): break
      case .option("image-opts"): imageOpts = true
      case .option("object"):
        try objects.add(argument, reporter: reporter, console: console)
      default:
        throw reporter.usageError("unrecognized option '\(parser.arguments[parser.optind - 1])'")
      }
    }
    guard let options else { throw reporter.usageError("Must specify options (-o)") }
    let meter = ProgressMeter(enabled: progress && !quiet, console: console)
    defer { meter.end() }
    let operands = Array(parser.operands)
    let asksForHelp = CreateOptionValues.asksForHelp(options)
    if let format, asksForHelp {
      return printHelp(format: format, reporter: reporter)
    }
    guard operands.count == 1, let filename = operands.first else {
      reporter.error("Expecting one image file name")
      throw CommandExit()
    }
    guard let cacheMode = parseCacheMode(cache) else {
      reporter.error("Invalid cache option: \(cache)")
      throw CommandExit()
    }
    var spec = ImageSpec()
    spec.format = format
    spec.node.cache = cacheMode
    guard
      let backend = await openImage(filename, imageOpts: imageOpts, spec: spec, reporter: reporter)
    else { throw CommandExit() }
    let node = backend.root
    let status: Int32
    if asksForHelp {
      status = printHelp(format: node.driver.formatName, reporter: reporter)
    } else {
      status = await amend(node, options: options, meter: meter, reporter: reporter)
    }
    await backend.close()
    return status
  }

  /// Parses `options` and applies them to the image.
  private static func amend(
    _ node: BlockNode, options: String, meter: ProgressMeter, reporter: Reporter
  ) async -> Int32 {
    guard let driver = node.driver as? Qcow2Driver else {
      reporter.error("Format driver '\(node.driver.formatName)' does not support option amendment")
      return 1
    }
    var values = CreateOptionValues(list: CreateOptionList(options: qcow2AmendOptions))
    do {
      try values.parse(options)
    } catch {
      var creation = CreateOptionValues(
        list: CreateOptionList(options: CreateOptionList.qcow2Options))
      let hint = (try? creation.parse(options)) != nil
      reporter.error(error.message)
      if hint { reporter.console.writeError("This option is only supported for image creation\n") }
      return 1
    }
    var changes = Qcow2AmendOptions()
    do {
      changes = try amendOptions(values)
    } catch {
      reporter.error(error.message)
      return 1
    }
    meter.report(0)
    do {
      try await driver.amend(node, options: changes) { offset, total in
        // qemu-img's amend_status_cb, in C's float arithmetic.
        meter.report(100 * Float(offset) / Float(total))
      }
    } catch {
      reporter.error(errorMessage(error))
      return 1
    }
    meter.report(100)
    return 0
  }

  /// The changes `values` ask for, after QEMU's checks of the option values
  /// that come before any change.
  private static func amendOptions(_ values: CreateOptionValues) throws(CreateOptionValues.Failure)
    -> Qcow2AmendOptions
  {
    if values.list.options.contains(where: {
      $0.name.hasPrefix("encrypt.") && values.string($0.name) != nil
    }) {
      throw .init(message: "Can't amend encryption options - encryption not present")
    }
    var changes = Qcow2AmendOptions()
    changes.size = values.number("size")
    switch values.string("compat") {
    case nil: break
    case "0.10", "v2": changes.version = 2
    case "1.1", "v3": changes.version = 3
    case let other?: throw .init(message: "Unknown compatibility level \(other)")
    }
    changes.backingFile = values.string("backing_file")
    changes.backingFormat = values.string("backing_fmt")
    changes.dataFile = values.string("data_file")
    changes.dataFileRaw = values.bool("data_file_raw")
    changes.lazyRefcounts = values.bool("lazy_refcounts")
    changes.refcountBits = values.number("refcount_bits")
    return changes
  }

  /// QEMU's `print_amend_option_help`.
  private static func printHelp(format: String, reporter: Reporter) -> Int32 {
    switch format {
    case "qcow2":
      reporter.console.write(
        "Amend options for 'qcow2':\n"
          + CreateOptionList(options: qcow2AmendOptions).helpText())
      return 0
    case "raw", "file", "null-co", "null-aio", "blkdebug", "copy-on-read":
      reporter.error("Format driver '\(format)' does not support option amendment")
      return 1
    default:
      reporter.error("Unknown file format '\(format)'")
      return 1
    }
  }

  /// QEMU's `is_valid_option_list`: not empty, no leading comma, no odd
  /// number of trailing commas.
  private static func isValidOptionList(_ text: String) -> Bool {
    guard let first = text.first, first != "," else { return false }
    let trailing = text.reversed().prefix { $0 == "," }.count
    return trailing % 2 == 0
  }
}
