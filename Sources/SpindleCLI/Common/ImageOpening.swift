import BlockCore
import BlockDrivers

/// What a tool asked to open: QEMU's `filename` / `-f` / `--image-opts` and the
/// open flags its options set.
struct ImageSpec {
  /// The file name (nil with `--image-opts` or `open -o` alone).
  var filename: String?
  /// The `-f` format.
  var format: String?
  /// Driver options (`--image-opts` or `open -o`).
  var options = DriverOptions()
  /// Read-only, cache, discard and copy-on-read.
  var node = NodeOptions()
  /// A discard mode that wins over a `discard` option (which is still
  /// checked): QEMU's open flags for `qemu-img convert`'s target, which has
  /// `BDRV_O_UNMAP` unless `-S 0`, whatever `--target-image-opts` say.
  var discardOverride: DiscardMode?
  /// `-U`: share every permission with other users.
  var forceShare = false
  /// `-s`: writes go to a temporary overlay that is thrown away on close.
  var snapshot = false
  /// `-i`/`-k`/`-n`: the AIO mode QEMU passes to its file protocol nodes.
  var aio: String?
  /// Whether the backing chain is opened (false: `BDRV_O_NO_BACKING`).
  var openBacking = true
  /// Whether the tool shares writing with other users: qemu-io, qemu-nbd and
  /// qemu-img do, except for `qemu-img convert`'s sources, the only images
  /// QEMU 7.2 opens with `BDRV_O_NO_SHARE` (unless `-U`).
  var sharesWrites = true
  /// Whether the image is opened to be checked (`BDRV_O_CHECK`).
  var forCheck = false
  /// Whether the image is opened only to edit its persistent bitmaps.
  var editsPersistentBitmaps = false
  /// Where drivers' messages (qcow2 corruption reports) go.
  var diagnostics: OpenContext.Diagnostics?
  /// Where drivers' error reports go (see ``OpenContext/errorReport``).
  var errorReport: OpenContext.Diagnostics?
}

/// Passes the AIO mode to the `file` node of the graph, as QEMU's
/// `BDRV_O_NATIVE_AIO`/`BDRV_O_IO_URING` flags reach file-posix (other drivers
/// ignore them): as `aio` when the image is opened with the file driver, as
/// `file.aio` when a raw or probed format sits on a file.
private func applyAIOMode(_ spec: inout ImageSpec) {
  guard let mode = spec.aio else { return }
  let top = spec.format ?? spec.options["driver"]
  if top == "file" {
    if spec.options["aio"] == nil { spec.options["aio"] = mode }
    return
  }
  guard top == nil || top == "raw" else { return }
  if let filename = spec.filename, filename.hasPrefix("json:") { return }
  if let filename = spec.filename, filename.hasPrefix("blkdebug:") {
    // blkdebug's image child is the file node.
    if spec.options["file.image.aio"] == nil { spec.options["file.image.aio"] = mode }
    return
  }
  let hasFileChild =
    spec.filename != nil || spec.options["file.filename"] != nil || spec.options["file"] != nil
  let protocolDriver = spec.options["file.driver"] ?? "file"
  if hasFileChild && protocolDriver == "file" && spec.options["file.aio"] == nil {
    spec.options["file.aio"] = mode
  }
}

/// QEMU's `bdrv_parse_cache_mode`: a cache mode name, where `off` means `none`.
func parseCacheMode(_ text: String) -> CacheMode? {
  text == "off" ? CacheMode.none : CacheMode(rawValue: text)
}

/// QEMU's `bdrv_parse_discard_flags`: `ignore`/`off` or `unmap`/`on`.
func parseDiscardMode(_ text: String) -> DiscardMode? {
  switch text {
  case "ignore", "off": .ignore
  case "unmap", "on": .unmap
  default: nil
  }
}

/// QEMU's `bdrv_parse_aio`: whether `text` names an AIO mode.
func isValidAIOMode(_ text: String) -> Bool {
  ["threads", "native", "io_uring"].contains(text)
}

/// The AIO mode after another `-i`/`-k`: QEMU only ever adds its
/// `BDRV_O_NATIVE_AIO` / `BDRV_O_IO_URING` flags, and file-posix prefers native
/// to io_uring; `threads` is the default and changes nothing.
func combinedAIOMode(_ current: String?, _ new: String) -> String? {
  if current == "native" || new == "native" { return "native" }
  if current == "io_uring" || new == "io_uring" { return "io_uring" }
  return current
}

/// The options QEMU's block layer handles for every driver (`bdrv_runtime_opts`
/// and friends). Spindle's opener does not know them, so they are taken out of
/// the top-level options here and folded into the open flags.
private func applyGenericOptions(_ spec: inout ImageSpec) throws {
  var options = spec.options
  if let readOnly = try takeSwitch(&options, "read-only") {
    if readOnly && !spec.node.readOnly {
      throw BlockError(.notPermitted, "Block node is read-only")
    }
  }
  _ = try takeSwitch(&options, "auto-read-only")
  let direct = try takeSwitch(&options, "cache.direct")
  let noFlush = try takeSwitch(&options, "cache.no-flush")
  if direct != nil || noFlush != nil {
    let current = spec.node.cache
    let isDirect = direct ?? current.direct
    let isNoFlush = noFlush ?? current.noFlush
    let writethrough = !current.writeCacheEnabled
    spec.node.cache =
      switch (isDirect, isNoFlush) {
      case (false, false): writethrough ? .writethrough : .writeback
      case (true, false): writethrough ? .directsync : .none
      case (false, true): .unsafe
      // NodeOptions has no "direct and no flush" mode; keep O_DIRECT.
      case (true, true): .none
      }
  }
  if let text = options.take("discard") {
    guard let mode = parseDiscardMode(text) else {
      throw BlockError(.invalidArgument, "Invalid discard option")
    }
    spec.node.discard = mode
  }
  if let text = options.take("detect-zeroes") {
    guard let mode = DetectZeroesMode(rawValue: text) else {
      throw BlockError(
        .invalidArgument, "Parameter 'detect-zeroes' does not accept value '\(text)'")
    }
    if mode == .unmap && spec.node.discard != .unmap {
      throw BlockError(
        .invalidArgument,
        "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap"
      )
    }
    spec.node.detectZeroes = mode
  }
  if let share = try takeSwitch(&options, "force-share"), share {
    spec.forceShare = true
  }
  spec.options = options
}

private func takeSwitch(_ options: inout DriverOptions, _ key: String) throws -> Bool? {
  guard options[key] != nil else { return nil }
  return try options.takeBool(key, default: false)
}

/// Opens a graph for a tool and attaches a backend to it, as QEMU's
/// `blk_new_open` does for qemu-io and qemu-img.
///
/// Generic block options in ``ImageSpec/options`` are applied here (see
/// ``applyGenericOptions(_:)``); with ``ImageSpec/snapshot`` the image becomes
/// the backing node of an in-memory overlay.
@BlockActor
func openBackend(_ spec: ImageSpec) async throws -> BlockBackend {
  var spec = spec
  let options = spec.options
  if spec.filename == nil && options["driver"] == nil && options["file"] == nil
    && !options.values.keys.contains(where: { $0.hasPrefix("file.") })
  {
    throw BlockError(.invalidArgument, "Must specify either driver or file")
  }
  try applyGenericOptions(&spec)
  if let forced = spec.discardOverride { spec.node.discard = forced }
  applyAIOMode(&spec)
  if spec.node.copyOnRead && spec.node.readOnly {
    throw BlockError(.invalidArgument, "Can't use copy-on-read on read-only device")
  }
  if spec.forceShare && !spec.node.readOnly {
    throw BlockError(.invalidArgument, "force-share=on can only be used with read-only images")
  }
  var imageNode = spec.node
  if spec.snapshot {
    // The image itself is only read; the overlay takes the writes.
    imageNode.readOnly = true
  }
  var context = OpenContext(node: imageNode, forceShare: spec.forceShare)
  context.openBacking = spec.openBacking
  context.forCheck = spec.forCheck
  context.editsPersistentBitmaps = spec.editsPersistentBitmaps
  context.noShare = !spec.sharesWrites && !spec.forceShare
  context.diagnostics = spec.diagnostics
  context.errorReport = spec.errorReport
  var root = try await ImageOpener.open(
    filename: spec.filename, format: spec.format, options: spec.options, context: context)
  if spec.snapshot {
    let overlay = BlockNode(
      name: ImageOpener.newNodeName(), driver: MemoryDriver(size: root.length), options: spec.node)
    overlay.attach(root, role: .backing)
    do {
      try await overlay.open()
    } catch {
      await root.close()
      throw error
    }
    root = overlay
  }
  return BlockBackend(root: root)
}

/// Whether QEMU warns that probing guessed raw for an opened image: the format
/// was guessed and the image is writable (QEMU restricts writes to block 0
/// then, and says so).
@BlockActor
func warnsAboutProbedRaw(_ spec: ImageSpec, _ backend: BlockBackend) -> Bool {
  let isRaw = backend.root.driver.formatName == "raw"
  return isRaw && spec.format == nil && spec.options["driver"] == nil && spec.filename != nil
    && !(spec.filename?.hasPrefix("json:") ?? false) && !spec.node.readOnly && !spec.snapshot
}

/// ``probedRawWarning(_:)`` for an opened image: QEMU names the file node
/// as it names it (an rbd node by its `json:` options).
@BlockActor
func probedRawWarning(_ filename: String, backend: BlockBackend) -> String {
  if let file = backend.root.file, file.driver is RBDDriver, let name = NodeFilename.name(of: file)
  {
    return probedRawWarning(name)
  }
  return probedRawWarning(filename)
}

/// QEMU's warning when probing guessed raw (printed without a program name),
/// naming the file as the file node does (`file:a:b` is `./a:b`).
func probedRawWarning(_ filename: String) -> String {
  """
  WARNING: Image format was not specified for '\(FileProtocolName.path(of: filename))' and probing guessed raw.
           Automatically detecting the format is dangerous for raw images, \
  write operations on block 0 will be restricted.
           Specify the 'raw' format explicitly to remove the restrictions.

  """
}
