import BlockCore
import BlockDrivers

/// `qemu-img dd`, a qemu-img 7.2 work-alike:
///
///     dd [--image-opts] [-U] [-f FMT] [-O OUTPUT_FMT] [bs=BLOCK_SIZE] [count=BLOCKS]
///        [skip=BLOCKS] if=INPUT of=OUTPUT
///
/// The output image is created with the input's size (at most `count`
/// blocks) less the skipped blocks, then every byte is copied block by block,
/// zeroes included, as QEMU's `img_dd` does. A skip past the input's end is
/// reported and leaves an empty output (exit status 0, like dd(1)).
@BlockActor
enum DdTool: ImageSubcommand {
  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("object", .required), .init("image-opts"),
    .init("force-share", key: "U"),
  ]

  /// The `name=value` operands.
  struct Operands {
    var blockSize: Int64 = 512
    var count: Int64?
    var skip: Int64?
    var input: String?
    var output: String?
  }

  static func parseAndRun(_ arguments: [String], reporter: Reporter, console: Console)
    async throws -> Int32
  {
    func fail(_ message: String) -> CommandExit {
      reporter.error(message)
      return CommandExit()
    }
    var parser = Getopt(arguments: arguments, options: ":hf:O:U", longOptions: longOptions) { _ in
    }
    var format: String?
    var outputFormat = "raw"
    var forceShare = false
    var imageOpts = false
    var objects = ObjectRegistry()
    while let result = parser.next() {
      let argument = parser.optarg ?? ""
      switch result {
      case .missingArgument, .invalid, .option("h"):
        throw reporter.sharedOptionExit(result, parser, console: console)
      case .option("f"): format = argument
      case .option("O"): outputFormat = argument
      case .option("U"): forceShare = true
      case .option("image-opts"): imageOpts = true
      case .option("object"):
        try objects.add(argument, reporter: reporter, console: console)
      default:
        throw reporter.usageError("unrecognized option '\(parser.arguments[parser.optind - 1])'")
      }
    }
    let operands = try parseOperands(Array(parser.operands), reporter: reporter)
    guard let input = operands.input, let output = operands.output else {
      throw fail("Must specify both input and output files")
    }
    var spec = ImageSpec()
    spec.format = format
    spec.node.readOnly = true
    spec.forceShare = forceShare
    // QEMU opens dd's input without BDRV_O_NO_SHARE: a raw input lets the
    // output be created over it (a qcow2 one still refuses, as its format
    // does not share writing its file).
    spec.sharesWrites = true
    guard let source = await openImage(input, imageOpts: imageOpts, spec: spec, reporter: reporter)
    else { throw CommandExit() }
    do {
      try await copy(
        source, input: input, to: output, format: outputFormat, operands: operands,
        reporter: reporter)
    } catch {
      await source.close()
      throw error
    }
    await source.close()
    return 0
  }

  /// QEMU's operand table: `bs`, `count`, `if`, `of`, `skip`, each
  /// `name=value`; anything else is reported by its name.
  private static func parseOperands(_ arguments: [String], reporter: Reporter) throws -> Operands {
    var operands = Operands()
    for argument in arguments {
      guard let equals = argument.firstIndex(of: "=") else {
        reporter.error("unrecognized operand \(argument)")
        throw CommandExit()
      }
      let name = String(argument[..<equals])
      let value = String(argument[argument.index(after: equals)...])
      switch name {
      case "bs":
        guard let size = parseBlockSize(value, reporter: reporter) else { throw CommandExit() }
        operands.blockSize = size
      case "count":
        guard let count = parseImageNumber(value, name: "count", reporter: reporter) else {
          throw CommandExit()
        }
        operands.count = count
      case "skip":
        guard let skip = parseImageNumber(value, name: "skip", reporter: reporter) else {
          throw CommandExit()
        }
        operands.skip = skip
      case "if": operands.input = value
      case "of": operands.output = value
      default:
        reporter.error("unrecognized operand \(name)")
        throw CommandExit()
      }
    }
    return operands
  }

  /// QEMU's `cvtnum_full("bs", value, 1, INT_MAX)`.
  private static func parseBlockSize(_ text: String, reporter: Reporter) -> Int64? {
    let maximum = Int64(Int32.max)
    switch parseQEMUSize(text) {
    case .success(let value) where value.value >= 1 && value.value <= UInt64(maximum):
      return Int64(value.value)
    case .failure(.invalid):
      reporter.error("Invalid bs specified. You may use k, M, G, T, P or E suffixes for")
      reporter.error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")
    case .success, .failure(.range):
      reporter.error("Invalid bs specified. Must be between 1 and \(maximum).")
    }
    return nil
  }

  /// Creates the output and copies the blocks.
  private static func copy(
    _ source: BlockBackend, input: String, to output: String, format: String,
    operands: Operands, reporter: Reporter
  ) async throws {
    func fail(_ message: String) -> CommandExit {
      reporter.error(message)
      return CommandExit()
    }
    guard let list = CreateOptionList.forFormat(format, withProtocol: true) else {
      throw fail("Unknown file format")
    }
    let blockSize = operands.blockSize
    var size = source.length
    if let count = operands.count, count <= Int64.max / blockSize, count * blockSize < size {
      size = count * blockSize
    }
    let skip = operands.skip ?? 0
    let skipsPastEnd = skip > Int64.max / blockSize || size < skip * blockSize
    var values = CreateOptionValues(list: list)
    let outputSize = skipsPastEnd ? 0 : size - skip * blockSize
    do {
      try values.set("size", String(outputSize))
      try await createFormatted(output, format: format, size: UInt64(outputSize), values: values)
    } catch {
      let message = (error as? CreateOptionValues.Failure)?.message ?? errorMessage(error)
      throw fail("\(output): error while creating output image: \(message)")
    }
    var targetSpec = ImageSpec()
    targetSpec.filename = output
    targetSpec.format = format
    let target: BlockBackend
    do {
      target = try await openBackend(targetSpec)
    } catch {
      throw fail("Could not open '\(output)': \(errorMessage(error))")
    }
    do {
      try await copyBlocks(
        from: source, input: input, to: target, size: size, skip: skipsPastEnd ? nil : skip,
        blockSize: blockSize, reporter: reporter)
      try await target.flush()
    } catch {
      await target.close()
      if error is CommandExit { throw error }
      throw fail("error while writing to output image file: \(codeText(error))")
    }
    await target.close()
  }

  /// Copies `input` from block `skip` (nil: past the end) to `size`.
  private static func copyBlocks(
    from source: BlockBackend, input: String, to target: BlockBackend, size: Int64, skip: Int64?,
    blockSize: Int64, reporter: Reporter
  ) async throws {
    func fail(_ message: String) -> CommandExit {
      reporter.error(message)
      return CommandExit()
    }
    var position: Int64
    if let skip {
      position = skip * blockSize
    } else {
      reporter.error("\(input): cannot skip to specified offset")
      position = size
    }
    // No block is longer than the input.
    let buffer = IOVector(allocating: Int(max(1, min(blockSize, size))))
    var written: Int64 = 0
    while position < size {
      let bytes = Int(min(blockSize, size - position))
      let data = buffer.slice(0, bytes)
      do {
        try await source.read(at: position, into: data)
      } catch {
        throw fail("error while reading from input image file: \(codeText(error))")
      }
      do {
        try await target.write(at: written, from: data)
      } catch {
        throw fail("error while writing to output image file: \(codeText(error))")
      }
      position += Int64(bytes)
      written += Int64(bytes)
    }
  }

  private static func codeText(_ error: any Error) -> String {
    (error as? BlockError).map(\.codeDescription) ?? "\(error)"
  }
}
