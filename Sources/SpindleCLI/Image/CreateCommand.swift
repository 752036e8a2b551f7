import BlockCore
import BlockDrivers
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// `qemu-img create`, a qemu-img 7.2 work-alike:
///
///     create [--object OBJECTDEF] [-q] [-f FMT] [-b BACKING_FILE [-F BACKING_FMT]]
///            [-u] [-o OPTIONS] FILENAME [SIZE]
///
/// Creates raw images (an empty file grown to the size, rounded up to 512
/// bytes, by the file driver, which writes the first block as QEMU's file
/// protocol does) and qcow2 images (``Qcow2Create``). Options, their checks, the order of
/// checks and messages follow QEMU's `img_create` and `bdrv_img_create`: the
/// `Formatting '...'` line comes after the option and backing-file checks and
/// before the format's own checks, and a format check that fails removes the
/// file, as QEMU's qcow2 driver does.
@BlockActor
enum CreateTool: ImageSubcommand {
  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("object", .required),
  ]

  static func parseAndRun(_ arguments: [String], reporter: Reporter, console: Console)
    async throws -> Int32
  {
    var parser = Getopt(arguments: arguments, options: ":F:b:f:ho:qu", longOptions: longOptions) {
      _ in
    }
    var format = "raw"
    var backingFile: String?
    var backingFormat: String?
    var options: String?
    var quiet = false
    var unsafe = false
    var objects = ObjectRegistry()
    while let result = parser.next() {
      let argument = parser.optarg ?? ""
      switch result {
      case .missingArgument, .invalid, .option("h"):
        throw reporter.sharedOptionExit(result, parser, console: console)
      case .option("F"): backingFormat = argument
      case .option("b"): backingFile = argument
      case .option("f"): format = argument
      case .option("o"):
        guard isValidOptionList(argument) else {
          reporter.error("Invalid option list: \(argument)")
          throw CommandExit()
        }
        options = options.map { "\($0),\(argument)" } ?? argument
      case .option("q"): quiet = true
      case .option("u"): unsafe = true
      case .option("object"):
        try objects.add(argument, reporter: reporter, console: console)
      default:
        throw reporter.usageError("unrecognized option '\(parser.arguments[parser.optind - 1])'")
      }
    }
    let operands = Array(parser.operands)
    if let options, CreateOptionValues.asksForHelp(options) {
      return printOptionHelp(format: format, filename: operands.first, reporter: reporter)
    }
    guard let filename = operands.first else {
      throw reporter.usageError("Expecting image file name")
    }
    var size: UInt64?
    if operands.count > 1 {
      guard let value = parseImageNumber(operands[1], name: "image size", reporter: reporter)
      else { throw CommandExit() }
      size = UInt64(value)
    }
    if operands.count > 2 { throw reporter.usageError("Unexpected argument: \(operands[2])") }

    let request = CreateRequest(
      filename: filename, format: format, backingFile: backingFile,
      backingFormat: backingFormat, options: options, size: size, unsafe: unsafe, quiet: quiet)
    do {
      try await createImage(request, console: console)
    } catch let failure as CreateOptionValues.Failure {
      console.writeError(
        "\(reporter.programName): \(filename): \(failure.message)\(failure.newline ? "\n" : "")")
      throw CommandExit()
    }
    return 0
  }

  /// QEMU's `is_valid_option_list`: not empty, and a trailing comma only as
  /// part of an escaped `,,`.
  static func isValidOptionList(_ text: String) -> Bool {
    guard !text.isEmpty else { return false }
    let trailingCommas = text.reversed().prefix { $0 == "," }.count
    return trailingCommas % 2 == 0
  }

  /// QEMU's `print_block_option_help`.
  static func printOptionHelp(format: String, filename: String?, reporter: Reporter)
    -> Int32
  {
    guard
      let list = CreateOptionList.forFormat(
        format, withProtocol: filename != nil, filename: filename)
    else {
      reporter.error("Unknown file format '\(format)'")
      return 1
    }
    if filename != nil {
      reporter.console.write("Supported options:\n\(list.helpText())")
    } else {
      reporter.console.write(
        """
        Supported \(format) options:
        \(list.helpText())
        The protocol level may support further options.
        Specify the target filename to include those options.

        """)
    }
    return 0
  }
}

/// One `create` as `bdrv_img_create` receives it.
struct CreateRequest {
  var filename: String
  var format: String
  var backingFile: String?
  var backingFormat: String?
  var options: String?
  /// The size operand (nil when not given).
  var size: UInt64?
  /// `-u`: do not open the backing file.
  var unsafe = false
  var quiet = false
}

/// QEMU's `bdrv_img_create` for raw and qcow2: checks options, opens the
/// backing file (for its size and to see it exists), prints the `Formatting`
/// line and creates the image. Errors are ``CreateOptionValues/Failure``s
/// whose message the caller prefixes with the file name.
@BlockActor
func createImage(_ request: CreateRequest, console: Console) async throws {
  typealias Failure = CreateOptionValues.Failure
  guard
    let list = CreateOptionList.forFormat(
      request.format, withProtocol: true, filename: request.filename)
  else {
    if ImageOpener.unimplementedFormats.contains(request.format) {
      throw Failure(message: ImageOpener.unsupportedFormat(request.format).message)
    }
    throw Failure(message: "Unknown file format '\(request.format)'")
  }
  var values = CreateOptionValues(list: list)
  if let options = request.options {
    try values.parse(options)
  }
  if values.string("size") == nil {
    if let size = request.size { try values.set("size", String(size)) }
  } else if request.size != nil {
    throw Failure(message: "The image size must be specified only once")
  }
  let supportsBacking = request.format == "qcow2"
  if let backing = request.backingFile {
    guard supportsBacking else {
      throw Failure(message: "Backing file not supported for file format '\(request.format)'")
    }
    try values.set("backing_file", backing)
  }
  if let backingFormat = request.backingFormat {
    guard supportsBacking else {
      throw Failure(
        message: "Backing file format not supported for file format '\(request.format)'")
    }
    try values.set("backing_fmt", backingFormat)
  }
  let backingFile = values.string("backing_file")
  let backingFormat = values.string("backing_fmt")
  if let backingFile {
    if backingFile == request.filename {
      throw Failure(
        message: "Error: Trying to create an image with the same filename as the backing file")
    }
    if backingFile.isEmpty {
      throw Failure(message: "Expected backing file name, got empty string")
    }
  }
  if let backingFile, !request.unsafe {
    let path = fullBackingPath(backingFile, relativeTo: request.filename)
    var options = DriverOptions()
    if let backingFormat { options["driver"] = backingFormat }
    var node = NodeOptions()
    node.readOnly = true
    let backing: BlockNode
    do {
      backing = try await ImageOpener.open(
        filename: path, format: nil, options: options,
        context: OpenContext(node: node, forceShare: true))
    } catch {
      throw Failure(message: "\(errorMessage(error))\nCould not open backing image.")
    }
    let length = backing.length
    let detected = backing.driver.formatName
    await backing.close()
    guard backingFormat != nil else {
      throw Failure(
        message: "Backing file specified without backing format\nDetected format of \(detected).",
        newline: false)
    }
    if values.string("size") == nil { try values.set("size", String(length)) }
  } else if backingFile != nil && backingFormat == nil {
    throw Failure(message: "Backing file specified without backing format")
  }
  guard let size = values.number("size") else {
    throw Failure(message: "Image creation needs a size parameter")
  }
  try checkSupported(values)
  if !request.quiet {
    console.write("Formatting '\(request.filename)', fmt=\(request.format) \(values.printed())\n")
  }
  try await createFormatted(request.filename, format: request.format, size: size, values: values)
}

/// Refuses the options QEMU knows and Spindle cannot honour yet. Switches
/// whose default (off) is all Spindle can do are accepted when off, as QEMU
/// accepts them (`nocow=off`; `encryption` is refused only when on: qcow2
/// rejects its other values after the `Formatting` line, see
/// ``checkEncryptionValue(_:)``).
func checkSupported(_ values: CreateOptionValues) throws(CreateOptionValues.Failure) {
  let offOnly: Set = ["nocow", "encryption"]
  func isHonouredDefault(_ name: String) -> Bool {
    guard offOnly.contains(name), let value = values.string(name) else { return false }
    if name == "encryption" { return value != "on" }
    return CreateOptionValues.parseBool(value) == false
  }
  if let unsupported = values.list.options.first(where: {
    !$0.supported && values.string($0.name) != nil && !isHonouredDefault($0.name)
  }) {
    throw CreateOptionValues.Failure(
      message: "Spindle does not support the option '\(unsupported.name)' yet")
  }
  for key in offOnly.sorted() {
    guard let value = values.string(key), !isHonouredDefault(key) else { continue }
    throw CreateOptionValues.Failure(message: "Spindle does not support \(key)=\(value) yet")
  }
}

/// qcow2's `encryption` switch (QEMU's `qcow2_co_create_opts`): `off` means
/// no encryption; any value but `on` becomes an encryption format QEMU does
/// not know, and the image is not created.
func checkEncryptionValue(_ values: CreateOptionValues) throws(CreateOptionValues.Failure) {
  guard let value = values.string("encryption"), value != "off", value != "on" else { return }
  throw CreateOptionValues.Failure(message: "Parameter 'format' does not accept value '\(value)'")
}

/// Creates the image file and, for qcow2, its format (QEMU's `bdrv_create`
/// once the options are checked); a qcow2 check that fails removes the file.
@BlockActor
func createFormatted(_ filename: String, format: String, size: UInt64, values: CreateOptionValues)
  async throws
{
  if filename.hasPrefix("rbd:") {
    try await createOnRBD(filename, format: format, size: size, values: values)
    return
  }
  // The file protocol's create takes the path without a `file:` prefix.
  let filename = FileProtocolName.path(of: filename)
  if format == "qcow2" { try checkEncryptionValue(values) }
  // Both formats start from an empty file, as QEMU's file protocol creates it.
  let rounded = (size + 511) & ~511
  let rawPreallocation = format == "raw" ? try preallocationMode(values) : .off
  if rawPreallocation == .metadata {
    try await createFile(filename, size: 0)
    throw CreateOptionValues.Failure(message: "Unsupported preallocation mode: metadata")
  }
  try await createFile(filename, size: 0)
  guard format == "qcow2" else {
    try await growRawFile(filename, size: rounded, mode: rawPreallocation)
    return
  }
  do {
    try await createQcow2(filename, size: rounded, values: values)
  } catch {
    _ = unlink(filename)
    throw error
  }
}

/// The rbd protocol's create (QEMU's `qemu_rbd_co_create_opts`) of a raw
/// (or `-f rbd`) image; formats with metadata on RBD are not there yet.
@BlockActor
private func createOnRBD(
  _ filename: String, format: String, size: UInt64, values: CreateOptionValues
)
  async throws
{
  guard format == "raw" || format == "rbd" else {
    throw CreateOptionValues.Failure(
      message: "Spindle does not create \(format) images on rbd yet")
  }
  do {
    try await RBDCreate.create(
      filename: filename, size: Int64(size),
      clusterSize: values.number("cluster_size").map(Int64.init))
  } catch {
    throw CreateOptionValues.Failure(message: errorMessage(error))
  }
}

/// QEMU's `bdrv_get_full_backing_filename_from_filename`: a relative backing
/// file name is relative to the image's directory.
func fullBackingPath(_ backing: String, relativeTo image: String) -> String {
  if backing.hasPrefix("/") || backing.hasPrefix("json:") { return backing }
  if let colon = backing.firstIndex(of: ":"), !backing[..<colon].contains("/") { return backing }
  guard let slash = image.lastIndex(of: "/") else { return backing }
  return String(image[...slash]) + backing
}

/// The file protocol's create: opens (creating) the file, empties it and
/// sets its length. An existing file is first opened for writing through
/// the file driver, so that one another user (or this process, as the
/// source of a convert) holds is refused with QEMU's lock error instead of
/// being truncated.
@BlockActor
private func createFile(_ path: String, size: UInt64) async throws {
  if access(path, F_OK) == 0 {
    var options = DriverOptions()
    options["driver"] = "file"
    options["filename"] = path
    do {
      let node = try await ImageOpener.open(filename: nil, options: options)
      await node.close()
    } catch let error as BlockError where error.code == .resourceTemporarilyUnavailable {
      throw CreateOptionValues.Failure(message: errorMessage(error))
    } catch {
      // Other failures are reported by the create itself.
    }
  }
  let result: Errno? = await Task.detached { () -> Errno? in
    do {
      let descriptor = try FileDescriptor.open(
        FilePath(path), .readWrite, options: [.create],
        permissions: [.ownerReadWrite, .groupRead, .otherRead])
      defer { try? descriptor.close() }
      guard ftruncate(descriptor.rawValue, 0) == 0, ftruncate(descriptor.rawValue, off_t(size)) == 0
      else { return Errno(rawValue: errno) }
      return nil
    } catch let error as Errno {
      return error
    } catch {
      return Errno.ioError
    }
  }.value
  if let result {
    throw CreateOptionValues.Failure(
      message: "Could not create '\(path)': \(Errno.describe(result))")
  }
}

/// qcow2's checks, in QEMU's order (`qcow2_co_create_opts`, `qcow2_co_create`),
/// then ``Qcow2Create``.
@BlockActor
private func createQcow2(_ path: String, size: UInt64, values: CreateOptionValues) async throws {
  typealias Failure = CreateOptionValues.Failure
  var options = Qcow2CreateOptions(size: Int64(size))
  let version: Int
  switch values.string("compat") ?? "v3" {
  case "0.10", "v2": version = 2
  case "1.1", "v3": version = 3
  case let other: throw Failure(message: "Parameter 'version' does not accept value '\(other)'")
  }
  options.compat = version == 2 ? "0.10" : "1.1"
  let clusterSize = values.number("cluster_size") ?? 65536
  guard clusterSize >= 512, clusterSize <= 2 << 20, clusterSize & (clusterSize - 1) == 0 else {
    throw Failure(message: "Cluster size must be a power of two between 512 and 2048k")
  }
  options.clusterSize = Int64(clusterSize)
  if values.string("backing_fmt") != nil && values.string("backing_file") == nil {
    throw Failure(message: "Backing format cannot be used without backing file")
  }
  options.lazyRefcounts = values.bool("lazy_refcounts") ?? false
  if version < 3 && options.lazyRefcounts {
    throw Failure(
      message:
        "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)"
    )
  }
  let bits = values.number("refcount_bits") ?? 16
  guard bits > 0, bits <= 64, bits & (bits - 1) == 0 else {
    throw Failure(message: "Refcount width must be a power of two and may not exceed 64 bits")
  }
  if version < 3 && bits != 16 {
    throw Failure(
      message:
        "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)"
    )
  }
  options.refcountBits = Int(bits)
  switch values.string("compression_type") ?? "zlib" {
  case "zlib": options.compressionType = .zlib
  case "zstd": options.compressionType = .zstd
  case let other:
    throw Failure(message: "Parameter 'compression-type' does not accept value '\(other)'")
  }
  if version < 3 && options.compressionType != .zlib {
    throw Failure(
      message:
        "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)"
    )
  }
  options.backingFile = values.string("backing_file")
  options.backingFormat = values.string("backing_fmt")
  options.preallocation = try preallocationMode(values)
  options.extendedL2 = values.bool("extended_l2") ?? false
  if options.extendedL2 && version < 3 {
    throw Failure(
      message:
        "Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)"
    )
  }
  if options.extendedL2 && clusterSize < 16384 {
    throw Failure(
      message: "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes")
  }
  // Created through the file protocol, and named in the header by the
  // path it stripped (QEMU stores the data file node's filename).
  options.dataFile = values.string("data_file").map(FileProtocolName.path(of:))
  options.dataFileRaw = values.bool("data_file_raw") ?? false
  do {
    try await Qcow2Create.create(at: path, options: options)
  } catch let error as BlockError where error.code == .fileTooLarge {
    throw Failure(
      message:
        "The image size is too large for file format 'qcow2' (try using a larger cluster size)")
  } catch let error as CreateOptionValues.Failure {
    throw error
  } catch {
    throw Failure(message: errorMessage(error))
  }
}

/// The `preallocation` create option: QEMU's modes, `off` when absent.
func preallocationMode(_ values: CreateOptionValues) throws(CreateOptionValues.Failure)
  -> PreallocationMode
{
  guard let text = values.string("preallocation") else { return .off }
  guard let mode = PreallocationMode(rawValue: text) else {
    throw CreateOptionValues.Failure(
      message: "Parameter 'preallocation' does not accept value '\(text)'")
  }
  return mode
}

/// The file protocol's create of a raw image (QEMU's `raw_co_create`): the
/// empty file grows to `size` through the file driver's truncate, which
/// preallocates as `mode` asks and, growing a file from empty, writes its
/// first block as QEMU's `allocate_first_block` does.
@BlockActor
private func growRawFile(_ path: String, size: UInt64, mode: PreallocationMode)
  async throws
{
  var options = DriverOptions()
  options["driver"] = "file"
  options["filename"] = path
  let node = try await ImageOpener.open(filename: nil, options: options)
  do {
    try await node.truncate(to: Int64(size), preallocation: mode)
  } catch {
    await node.close()
    throw CreateOptionValues.Failure(message: errorMessage(error))
  }
  await node.close()
}
