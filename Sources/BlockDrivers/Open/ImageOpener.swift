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
  /// Whether the image is opened only to edit its persistent dirty bitmaps
  /// (`qemu-img bitmap`): qcow2 then keeps its bitmaps extension valid on a
  /// writable open, so the caller must not write data through the node.
  public var editsPersistentBitmaps = false
  /// The secrets `--object secret` defined, by ID, as their bytes (the
  /// rbd driver's `key-secret`).
  public var secrets: [String: [UInt8]] = [:]
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
  /// Whether a node of this protocol opened to probe the format above it
  /// becomes that format's `file` child instead of being closed and opened
  /// again (as QEMU probes through the protocol node it keeps): a network
  /// protocol whose server may take one connection only, such as NBD.
  public let keepsProbedNode: Bool

  /// Creates an entry (drivers outside this module register through it).
  public init(kind: DriverKind, open: @escaping DriverFactory, keepsProbedNode: Bool = false) {
    self.kind = kind
    self.open = open
    self.keepsProbedNode = keepsProbedNode
  }
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
    "rbd": DriverEntry(kind: .protocolDriver, open: RBDDriver.openNode),
  ]

  /// The secrets `--object secret` defined in this process, by ID, as
  /// their raw bytes (QEMU's objects belong to the process); the rbd
  /// driver's `key-secret` looks here after ``OpenContext/secrets``.
  public static var definedSecrets: [String: [UInt8]] = [:]

  /// Protocol nodes opened to probe a format, waiting to become that
  /// format's `file` child, by the child's filename (see
  /// ``DriverEntry/keepsProbedNode``).
  private static var probedNodes: [String: BlockNode] = [:]

  /// Drivers chosen by a filename's `NAME:` prefix (QEMU's protocol names),
  /// which then parse the whole filename (`blkdebug:CONFIG:IMAGE`, or
  /// `file:PATH`, which the file driver strips).
  public static var filenamePrefixes: [String: String] = [
    "blkdebug": "blkdebug", "file": "file", "rbd": "rbd",
  ]

  /// The formats QEMU 7.2 has (and probes) that Spindle does not implement
  /// yet: naming one, or probing an image of one, fails with
  /// ``unsupportedFormat(_:)`` instead of reading the image's container
  /// bytes as raw.
  public static let unimplementedFormats: Set<String> = [
    "vmdk", "vpc", "vhdx", "vdi", "qed", "parallels", "dmg", "luks", "bochs", "cloop", "qcow",
  ]

  /// The error for a format Spindle does not implement.
  public static func unsupportedFormat(_ name: String) -> BlockError {
    BlockError.notSupported("format '\(name)' is not supported by Spindle yet")
  }

  /// The driver a filename's prefix selects, if any.
  static func driverForPrefix(of filename: String) -> String? {
    guard let colon = filename.firstIndex(of: ":") else { return nil }
    return filenamePrefixes[String(filename[..<colon])]
  }

  /// Whether a driver parses a filename itself: protocols, and filters
  /// with a filename syntax (`blkdebug:`). Other drivers (formats) hand a
  /// filename to their `file` child.
  static func takesFilename(_ driver: String) -> Bool {
    drivers[driver]?.kind == .protocolDriver || filenamePrefixes.values.contains(driver)
  }

  private static var nodeCounter = 0

  /// A fresh automatic node name (QEMU's `#block123` style).
  public static func newNodeName() -> String {
    nodeCounter += 1
    return "#block\(nodeCounter)"
  }

  /// A node with a fresh automatic name over `driver`, opened; closed again
  /// (releasing what the driver holds) when opening it fails.
  static func openNode(over driver: any BlockDriver, options: NodeOptions) async throws
    -> BlockNode
  {
    let node = BlockNode(name: newNodeName(), driver: driver, options: options)
    do {
      try await node.open()
    } catch {
      await node.close()
      throw error
    }
    return node
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
      let namesFile =
        options["file"] != nil || options.values.keys.contains { $0.hasPrefix("file.") }
      if options["driver"] == nil && format == nil && !namesFile {
        throw BlockError(.invalidArgument, "Must specify either driver or file")
      }
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
      options["driver"] = try await probe(&options, filename: filename, context: context)
    }
    var context = context
    if let driver = options["driver"], drivers[driver]?.kind == .protocolDriver {
      context.sharesFileWrites = !context.noShare
    }
    let probedName = options["file.filename"]
    defer {
      // A probed node the format did not take (it failed first) is closed.
      if let probedName, let unused = probedNodes.removeValue(forKey: probedName) {
        Task { await unused.close() }
      }
    }
    return try await openNode(&options, context: context)
  }

  /// Opens the node `options["driver"]` names and rejects leftovers.
  public static func openNode(_ options: inout DriverOptions, context: OpenContext) async throws
    -> BlockNode
  {
    let given = options
    guard let name = options.take("driver") else {
      throw BlockError(.invalidArgument, "Parameter 'driver' is required")
    }
    guard let entry = drivers[name] else {
      if unimplementedFormats.contains(name) { throw unsupportedFormat(name) }
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
    node.openOptions = ownOptions(given)
    return node
  }

  /// The options a node keeps as its own (QEMU's `bs->options` after open):
  /// those of its children (`file.*`, `backing.*`, `data-file.*`, `image.*`
  /// and references by name) go.
  static func ownOptions(_ options: DriverOptions) -> [String: String] {
    let children = ["file", "backing", "data-file", "image"]
    return options.values.filter { key, _ in
      !children.contains { key == $0 || key.hasPrefix($0 + ".") }
    }
  }

  /// Opens the `file` child of a format from the `file.` options.
  public static func openFileChild(_ options: inout DriverOptions, context: OpenContext)
    async throws -> BlockNode
  {
    if let filename = options["file.filename"], let probed = probedNodes[filename],
      options["file"] == nil
    {
      probedNodes[filename] = nil
      _ = options.takeChild("file")
      return probed
    }
    var child = options.takeChild("file")
    if let reference = options.take("file") {
      child["filename"] = reference
    }
    return try await openChild(&child, role: "file", context: context)
  }

  /// Opens a child from its options (already taken out of the parent's):
  /// the driver a filename prefix selects, else `file`. `filename` is the
  /// name the parent gives the child (blkdebug's image from its
  /// `blkdebug:CONFIG:IMAGE` name, QEMU's `bdrv_open_child` filename): a
  /// driver that does not parse file names passes it on to its own `file`
  /// child.
  public static func openChild(
    _ child: inout DriverOptions, filename: String? = nil, role: String, context: OpenContext
  ) async throws -> BlockNode {
    if let filename {
      if let driver = child["driver"], !takesFilename(driver) {
        if child["file.filename"] == nil && child["file"] == nil {
          child["file.filename"] = filename
        }
      } else if child["filename"] == nil {
        child["filename"] = filename
      }
    }
    try selectChildDriver(&child, role: role)
    return try await openNode(&child, context: context)
  }

  /// Sets a child's driver when its options name none: the driver its
  /// filename's prefix selects, else `file` (children are not probed).
  private static func selectChildDriver(_ child: inout DriverOptions, role: String) throws {
    guard child["driver"] == nil else { return }
    guard let filename = child["filename"] else {
      throw BlockError(.invalidArgument, "A block device must be specified for \"\(role)\"")
    }
    child["driver"] = driverForPrefix(of: filename) ?? "file"
  }

  /// Guesses a format as QEMU's `find_image_format` does: from the first
  /// bytes of the `file` child (opened with the driver its filename's
  /// prefix selects, so that `blkdebug::IMAGE` is probed through blkdebug)
  /// and, for dmg, the filename the user gave (`filename`, nil for options
  /// and `json:` names). An empty image is raw.
  static func probe(_ options: inout DriverOptions, filename: String?, context: OpenContext)
    async throws -> String
  {
    if let protocolDriver = options["file.driver"],
      drivers[protocolDriver]?.kind == .protocolDriver,
      options["file.filename"] == nil
    {
      // A protocol with nothing to probe: open it directly.
      options.values = options.takeChild("file").values
      return protocolDriver
    }
    guard let prefix = try await probeBytes(options, context: context) else { return "raw" }
    return FormatProbe.format(of: prefix, filename: filename)
  }

  /// Opens the `file` child read-only and shared and reads what probing
  /// looks at; nil when it cannot be opened or read (the real open then
  /// reports why) or is empty. A protocol that keeps its probed node is
  /// opened as the format will use it and left in ``probedNodes``; its
  /// open failing is the error (as QEMU, which opens it once: a network
  /// protocol is not asked twice).
  private static func probeBytes(_ options: DriverOptions, context: OpenContext) async throws
    -> [UInt8]?
  {
    var copy = options
    var child = copy.takeChild("file")
    if let reference = copy.take("file"), child["filename"] == nil {
      child["filename"] = reference
    }
    guard (try? selectChildDriver(&child, role: "file")) != nil else { return nil }
    var keptName: String?
    if let filename = options["file.filename"], options["file"] == nil,
      probedNodes[filename] == nil, let driver = child["driver"],
      drivers[driver]?.keepsProbedNode == true
    {
      keptName = filename
    }
    let keeps = keptName != nil
    var probeContext = context
    if !keeps {
      probeContext.node = NodeOptions(readOnly: true)
      probeContext.forceShare = true
    }
    probeContext.diagnostics = { _ in }
    let opened: BlockNode?
    if keeps {
      opened = try await openNode(&child, context: probeContext)
    } else {
      opened = try? await openNode(&child, context: probeContext)
    }
    guard let file = opened else { return nil }
    let bytes =
      file.length > 0
      ? try? await file.read(at: 0, count: Int(min(file.length, Int64(FormatProbe.bufferSize))))
      : nil
    if let keptName {
      probedNodes[keptName] = file
    } else {
      await file.close()
    }
    return bytes
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
