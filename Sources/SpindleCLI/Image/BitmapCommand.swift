import BlockCore
import BlockDrivers

/// `qemu-img bitmap`, a qemu-img 7.2 work-alike:
///
///     bitmap (--merge SOURCE | --add | --remove | --clear | --enable |
///             --disable)... [-b SOURCE_FILE [-F SOURCE_FMT]] [-g GRANULARITY]
///            [--object OBJECTDEF] [--image-opts | -f FMT] FILENAME BITMAP
///
/// The operations run in command-line order on the persistent bitmap
/// BITMAP of a qcow2 image opened writable without its backing chain;
/// `--add` makes a disabled bitmap when `--disable` is given anywhere. The
/// bitmaps are stored when the image closes, also after a failed
/// operation, as qemu-img's do.
@BlockActor
enum BitmapTool: ImageSubcommand {
  /// One operation.
  enum Operation {
    case add, remove, clear, enable, disable
    case merge(String)

    /// The name qemu-img reports a failure with.
    var name: String {
      switch self {
      case .add: "add"
      case .remove: "remove"
      case .clear: "clear"
      case .enable: "enable"
      case .disable: "disable"
      case .merge: "merge"
      }
    }
  }

  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("object", .required), .init("image-opts"), .init("add"),
    .init("remove"), .init("clear"), .init("enable"), .init("disable"),
    .init("merge", .required), .init("granularity", .required, key: "g"),
    .init("source-file", .required, key: "b"), .init("source-format", .required, key: "F"),
  ]

  static func parseAndRun(_ arguments: [String], reporter: Reporter, console: Console)
    async throws -> Int32
  {
    var parser = Getopt(arguments: arguments, options: ":b:f:F:g:h", longOptions: longOptions) {
      _ in
    }
    var operations: [Operation] = []
    var format: String?
    var sourceFile: String?
    var sourceFormat: String?
    var granularity: Int64?
    var imageOpts = false
    var objects = ObjectRegistry()
    while let result = parser.next() {
      let argument = parser.optarg ?? ""
      switch result {
      case .missingArgument, .invalid, .option("h"):
        throw reporter.sharedOptionExit(result, parser, console: console)
      case .option("b"): sourceFile = argument
      case .option("f"): format = argument
      case .option("F"): sourceFormat = argument
      case .option("g"):
        guard let value = parseImageNumber(argument, name: "granularity", reporter: reporter)
        else { throw CommandExit() }
        granularity = value
      case .option("add"): operations.append(.add)
      case .option("remove"): operations.append(.remove)
      case .option("clear"): operations.append(.clear)
      case .option("enable"): operations.append(.enable)
      case .option("disable"): operations.append(.disable)
      case .option("merge"): operations.append(.merge(argument))
      case .option("image-opts"): imageOpts = true
      case .option("object"):
        try objects.add(argument, reporter: reporter, console: console)
      default:
        throw reporter.usageError("unrecognized option '\(parser.arguments[parser.optind - 1])'")
      }
    }
    func fail(_ message: String) -> CommandExit {
      reporter.error(message)
      return CommandExit()
    }
    guard !operations.isEmpty else {
      throw fail("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge")
    }
    let adds = operations.contains { if case .add = $0 { true } else { false } }
    let merges = operations.contains { if case .merge = $0 { true } else { false } }
    let disabled = operations.contains { if case .disable = $0 { true } else { false } }
    // qemu-img tests the granularity for being non-zero.
    if let granularity, granularity != 0, !adds {
      throw fail("granularity only supported with --add")
    }
    if sourceFormat != nil && sourceFile == nil { throw fail("-F only supported with -b") }
    if sourceFile != nil && !merges {
      throw fail("Merge bitmap source file only supported with --merge")
    }
    guard parser.operands.count == 2 else { throw fail("Expecting filename and bitmap name") }
    let operands = Array(parser.operands)
    let filename = operands[0]
    let name = operands[1]

    var spec = ImageSpec()
    spec.format = format
    spec.openBacking = false
    spec.editsPersistentBitmaps = true
    guard
      let backend = await openImage(filename, imageOpts: imageOpts, spec: spec, reporter: reporter)
    else { throw CommandExit() }
    // qemu-img loads the bitmaps as it opens the image (marking them in
    // use) and stores them as it closes it, whatever happens between.
    let editor: Qcow2BitmapEditor?
    do {
      editor =
        backend.root.driver is Qcow2Driver ? try await Qcow2BitmapEditor.open(backend.root) : nil
    } catch {
      reporter.error("Could not open '\(filename)': \(errorMessage(error))")
      await backend.close()
      throw CommandExit()
    }
    var succeeded = false
    if let sourceFile {
      var sourceSpec = ImageSpec()
      sourceSpec.format = sourceFormat
      sourceSpec.openBacking = false
      sourceSpec.node.readOnly = true
      if let source = await openImage(
        sourceFile, imageOpts: false, spec: sourceSpec, reporter: reporter)
      {
        let sourceEditor =
          source.root.driver is Qcow2Driver
          ? try? await Qcow2BitmapEditor.open(source.root) : nil
        succeeded = await perform(
          operations, name: name, granularity: granularity, disabled: disabled,
          on: backend.root, editor: editor, source: sourceEditor, reporter: reporter)
        await source.close()
      }
    } else {
      succeeded = await perform(
        operations, name: name, granularity: granularity, disabled: disabled, on: backend.root,
        editor: editor, source: editor, reporter: reporter)
    }
    if let editor {
      do {
        try await editor.store()
      } catch {
        reporter.error(
          "Lost persistent bitmaps during inactivation of node '\(backend.root.name)': "
            + errorMessage(error))
        succeeded = false
      }
    }
    await backend.close()
    return succeeded ? 0 : 1
  }

  /// Runs the operations in order until one fails; returns whether all
  /// succeeded.
  private static func perform(
    _ operations: [Operation], name: String, granularity: Int64?, disabled: Bool,
    on node: BlockNode, editor: Qcow2BitmapEditor?, source: Qcow2BitmapEditor?,
    reporter: Reporter
  ) async -> Bool {
    for operation in operations {
      do {
        try await run(
          operation, name: name, granularity: granularity, disabled: disabled, node: node,
          editor: editor, source: source)
      } catch {
        reporter.error(
          "Operation \(operation.name) on bitmap \(name) failed: \(errorMessage(error))")
        return false
      }
    }
    return true
  }

  private static func run(
    _ operation: Operation, name: String, granularity: Int64?, disabled: Bool, node: BlockNode,
    editor: Qcow2BitmapEditor?, source: Qcow2BitmapEditor?
  ) async throws {
    let notFound = BlockError(.noSuchFileOrDirectory, "Dirty bitmap '\(name)' not found")
    guard let editor else {
      // A format without persistent bitmaps has no bitmap to work on and
      // cannot store a new one.
      guard case .add = operation else { throw notFound }
      _ = try Qcow2BitmapEditor.checkNewBitmap(name, granularity: granularity)
      throw BlockError(
        .notSupported, "Can't store persistent bitmaps to \(node.name): Operation not supported")
    }
    switch operation {
    case .add: try editor.add(name, granularity: granularity, disabled: disabled)
    case .remove: try await editor.remove(name)
    case .clear: try editor.clear(name)
    case .enable: try editor.setEnabled(name, true)
    case .disable: try editor.setEnabled(name, false)
    case .merge(let sourceName):
      try editor.merge(into: name) {
        guard let source else {
          throw BlockError(.noSuchFileOrDirectory, "Dirty bitmap '\(sourceName)' not found")
        }
        return (try source.bitmap(sourceName), source.diskSize)
      }
    }
  }
}
