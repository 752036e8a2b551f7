import BlockCore

/// How a graph is opened: engine options and locking.
public struct OpenContext: Sendable {
  /// Options every node of the graph gets (read-only, cache, discard, ...).
  public var node: NodeOptions
  /// Open without taking the image locks' "consistent read" share away from
  /// other users (qemu-img -U / force-share).
  public var forceShare: Bool
  /// Whether a missing format may be guessed.
  public var allowProbe: Bool
  /// Whether a `file` node opened in this context lets other users write and
  /// resize the image, as QEMU does for a file opened directly and under the
  /// raw format (qemu-io shares everything); under formats with metadata, such
  /// as qcow2, it does not (QEMU's `bdrv_default_perms` for storage children).
  public var sharesFileWrites = false
  /// Whether the user itself does not share writing with others (QEMU's
  /// `BDRV_O_NO_SHARE`, as qemu-img opens images): then no file node shares
  /// writing, whatever the format above it.
  public var noShare = false
  /// Whether formats open their backing files (false: QEMU's
  /// `BDRV_O_NO_BACKING`, as `qemu-img info` opens images; the node then has
  /// no backing child and must not be read).
  public var openBacking = true
  /// Whether the image is opened to be checked (QEMU's `BDRV_O_CHECK`, as
  /// `qemu-img check` opens it): formats then open inconsistent images
  /// (dirty, corrupt) writable without repairing them first.
  public var forCheck = false
  /// Where drivers print messages for the user, such as qcow2's corruption
  /// reports (standard error when nil).
  public var diagnostics: Diagnostics?
  /// Where drivers send error reports (QEMU's `error_report`, such as
  /// qcow2's cache flush failures on close): the receiver prefixes the
  /// program's name and ends the line. Nil: standard error, unprefixed.
  public var errorReport: Diagnostics?

  /// A receiver of driver messages (complete lines).
  public typealias Diagnostics = @BlockActor @Sendable (String) -> Void

  /// Creates a context.
  public init(node: NodeOptions = NodeOptions(), forceShare: Bool = false, allowProbe: Bool = true)
  {
    self.node = node
    self.forceShare = forceShare
    self.allowProbe = allowProbe
  }
}

/// Opens one driver's node from its options; children are opened through
/// ``ImageOpener``.
public typealias DriverFactory =
  @BlockActor (_ options: inout DriverOptions, _ context: OpenContext) async throws -> BlockNode

/// What a driver name stands for.
public struct DriverEntry: Sendable {
  /// Format, protocol or filter.
  public let kind: DriverKind
  /// Opens a node; leaves unknown options in `options` for the opener to reject.
  public let open: DriverFactory
}

/// Builds block graphs from filenames and QEMU-style options (QEMU's
/// `bdrv_open`): `json:{...}` pseudo-filenames, `driver=...` option sets, a
/// format over a protocol, and format probing when no format is named.
@BlockActor
public enum ImageOpener {
  /// Registered drivers by QEMU name.
  public static var drivers: [String: DriverEntry] = [
    "null-co": DriverEntry(kind: .protocolDriver, open: openNull),
    "memory": DriverEntry(kind: .protocolDriver, open: openMemory),
    "file": DriverEntry(kind: .protocolDriver, open: FileDriver.openNode),
    "raw": DriverEntry(kind: .format, open: RawDriver.openNode),
    "qcow2": DriverEntry(kind: .format, open: Qcow2Driver.openNode),
    "blkdebug": DriverEntry(kind: .filter, open: BlkdebugDriver.openNode),
    "copy-on-read": DriverEntry(kind: .filter, open: CopyOnReadDriver.openNode),
  ]

  /// Drivers chosen by a filename's `NAME:` prefix (QEMU's protocol names),
  /// which then parse the whole filename (`blkdebug:CONFIG:IMAGE`).
  public static var filenamePrefixes: [String: String] = ["blkdebug": "blkdebug"]

  /// The driver a filename's prefix selects, if any.
  static func driverForPrefix(of filename: String) -> String? {
    guard let colon = filename.firstIndex(of: ":") else { return nil }
    return filenamePrefixes[String(filename[..<colon])]
  }

  private static var nodeCounter = 0

  /// A fresh automatic node name (QEMU's `#block123` style).
  public static func newNodeName() -> String {
    nodeCounter += 1
    return "#block\(nodeCounter)"
  }

  /// Opens a graph. `filename` may be a path, `json:{...}`, or nil when
  /// `options` say everything; `format` is the `-f` argument.
  public static func open(
    filename: String?, format: String? = nil, options: DriverOptions = DriverOptions(),
    context: OpenContext = OpenContext()
  ) async throws -> BlockNode {
    var options = options
    var filename = filename
    if let name = filename, name.hasPrefix("json:") {
      let parsed = try DriverOptions.parseJSON(String(name.dropFirst(5)))
      for (key, value) in parsed.values where options[key] == nil { options[key] = value }
      filename = nil
    }
    if let format {
      if let existing = options["driver"], existing != format {
        throw BlockError(
          .invalidArgument,
          "Cannot use image format '\(format)' when 'driver' is '\(existing)'")
      }
      options["driver"] = format
    }
    if let filename { options["file.filename"] = options["file.filename"] ?? filename }
    if options["driver"] == nil {
      options["driver"] = try await probe(&options, context: context)
    }
    var context = context
    if let driver = options["driver"], drivers[driver]?.kind == .protocolDriver {
      context.sharesFileWrites = !context.noShare
    }
    return try await openNode(&options, context: context)
  }

  /// Opens the node `options["driver"]` names and rejects leftovers.
  public static func openNode(_ options: inout DriverOptions, context: OpenContext) async throws
    -> BlockNode
  {
    guard let name = options.take("driver") else {
      throw BlockError(.invalidArgument, "Parameter 'driver' is required")
    }
    guard let entry = drivers[name] else {
      throw BlockError(.invalidArgument, "Unknown driver '\(name)'")
    }
    if entry.kind == .protocolDriver {
      // A protocol opened directly gets its filename at the top level.
      if let filename = options.take("file.filename"), options["filename"] == nil {
        options["filename"] = filename
      }
    }
    _ = options.take("node-name")
    var context = context
    if options["backing"] == "" {
      // QEMU's `"backing": null` (or the deprecated empty name): no backing.
      _ = options.take("backing")
      context.openBacking = false
    }
    let node = try await entry.open(&options, context)
    if let leftover = options.values.keys.sorted().first {
      await node.close()
      // QEMU's two texts: protocols (drivers with a filename syntax, such as
      // blkdebug) "don't", formats and format-like filters "do not".
      let isProtocol = entry.kind == .protocolDriver || filenamePrefixes.values.contains(name)
      throw BlockError(
        .invalidArgument,
        isProtocol
          ? "Block protocol '\(name)' doesn't support the option '\(leftover)'"
          : "Block format '\(name)' does not support the option '\(leftover)'")
    }
    return node
  }

  /// Opens the `file` child of a format from the `file.` options.
  public static func openFileChild(_ options: inout DriverOptions, context: OpenContext)
    async throws -> BlockNode
  {
    var child = options.takeChild("file")
    if let reference = options.take("file") {
      child["filename"] = reference
    }
    return try await openChild(&child, role: "file", context: context)
  }

  /// Opens a child from its options (already taken out of the parent's):
  /// the driver a filename prefix selects, else `file`.
  public static func openChild(_ child: inout DriverOptions, role: String, context: OpenContext)
    async throws -> BlockNode
  {
    if child["driver"] == nil {
      guard let filename = child["filename"] else {
        throw BlockError(.invalidArgument, "A block device must be specified for \"\(role)\"")
      }
      child["driver"] = driverForPrefix(of: filename) ?? "file"
    }
    return try await openNode(&child, context: context)
  }

  /// Guesses a format from the image's first bytes (qcow2 by its magic);
  /// every image that is not a known format is raw.
  static func probe(_ options: inout DriverOptions, context: OpenContext) async throws -> String {
    if let protocolDriver = options["file.driver"],
      drivers[protocolDriver]?.kind == .protocolDriver,
      options["file.filename"] == nil
    {
      // A protocol with nothing to probe: open it directly.
      options.values = options.takeChild("file").values
      return protocolDriver
    }
    return await probeFormat(options, context: context) ?? "raw"
  }

  /// Opens the `file` child read-only and shared to look at its magic; nil
  /// when it is no known format or cannot be opened (the real open reports
  /// why).
  private static func probeFormat(_ options: DriverOptions, context: OpenContext) async -> String? {
    var copy = options
    var child = copy.takeChild("file")
    if child["driver"] == nil { child["driver"] = "file" }
    var probeContext = context
    probeContext.node = NodeOptions(readOnly: true)
    probeContext.forceShare = true
    guard let file = try? await openNode(&child, context: probeContext) else { return nil }
    let magic = try? await file.read(at: 0, count: Int(min(file.length, 4)))
    await file.close()
    if magic == [0x51, 0x46, 0x49, 0xFB] { return "qcow2" }
    return nil
  }

  private static func openNull(_ options: inout DriverOptions, _ context: OpenContext) async throws
    -> BlockNode
  {
    let size = try options.takeSize("size") ?? (1 << 30)
    let readZeroes = try options.takeBool("read-zeroes", default: false)
    let latency = try options.takeInt("latency-ns") ?? 0
    _ = options.take("filename")
    if latency < 0 { throw BlockError(.invalidArgument, "latency-ns is invalid") }
    let driver = NullDriver(
      size: size, readZeroes: readZeroes,
      latencyNanoseconds: UInt64(latency))
    let node = BlockNode(name: newNodeName(), driver: driver, options: context.node)
    try await node.open()
    return node
  }

  private static func openMemory(_ options: inout DriverOptions, _ context: OpenContext)
    async throws -> BlockNode
  {
    let size = try options.takeSize("size") ?? 0
    _ = options.take("filename")
    let node = BlockNode(
      name: newNodeName(), driver: MemoryDriver(size: size),
      options: context.node)
    try await node.open()
    return node
  }
}
