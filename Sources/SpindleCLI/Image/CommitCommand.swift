import BlockCore
import BlockDrivers

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// `qemu-img commit`, a qemu-img 7.2 work-alike:
///
///     commit [--object OBJECTDEF] [--image-opts] [-q] [-f FMT] [-t CACHE] [-b BASE]
///            [-r RATE_LIMIT] [-d] [-p] FILENAME
///
/// Every range allocated above the base (the backing file, or `-b`'s image
/// in the chain) is copied into the base, which grows to the image's size
/// if smaller, as QEMU's active commit does; then, unless `-d` or `-b`
/// (which implies `-d`), the image is emptied (``Qcow2Driver/makeEmpty(_:)``).
/// The base, opened read-only with the chain, is reopened writable in place.
/// `-r` limits the bytes copied per second as QEMU's commit job does
/// (``RateLimiter``). An error while copying is reported as QEMU's job
/// reports it: "Block job failed: " and the errno's text.
@BlockActor
enum CommitTool: ImageSubcommand {
  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("object", .required), .init("image-opts"),
  ]

  static func parseAndRun(_ arguments: [String], reporter: Reporter, console: Console)
    async throws -> Int32
  {
    func fail(_ message: String) -> CommandExit {
      reporter.error(message)
      return CommandExit()
    }
    var parser = Getopt(arguments: arguments, options: ":f:ht:b:dpqr:", longOptions: longOptions) {
      _ in
    }
    var format: String?
    var cache = "writeback"
    var baseName: String?
    var drop = false
    var progress = false
    var quiet = false
    var imageOpts = false
    var objects = ObjectRegistry()
    var rateLimit: UInt64 = 0
    while let result = parser.next() {
      let argument = parser.optarg ?? ""
      switch result {
      case .missingArgument, .invalid, .option("h"):
        throw reporter.sharedOptionExit(result, parser, console: console)
      case .option("f"): format = argument
      case .option("t"): cache = argument
      case .option("b"):
        baseName = argument
        // -b implies -d: the image above the base keeps its data.
        drop = true
      case .option("d"): drop = true
      case .option("r"):
        guard let rate = parseImageNumber(argument, name: "rate limit", reporter: reporter)
        else {
          throw CommandExit()
        }
        rateLimit = UInt64(rate)
      case .option("p"): progress = true
      case .option("q"): quiet = true
      case .option("image-opts"): imageOpts = true
      case .option("object"):
        try objects.add(argument, reporter: reporter, console: console)
      default:
        throw reporter.usageError("unrecognized option '\(parser.arguments[parser.optind - 1])'")
      }
    }
    if quiet { progress = false }
    guard parser.operands.count == 1, let filename = parser.operands.first else {
      throw reporter.usageError("Expecting one image file name")
    }
    guard let cacheMode = parseCacheMode(cache) else {
      throw fail("Invalid cache option: \(cache)")
    }
    var spec = ImageSpec()
    spec.format = format
    spec.node.cache = cacheMode
    spec.node.discard = .unmap
    guard
      let image = await openImage(filename, imageOpts: imageOpts, spec: spec, reporter: reporter)
    else { throw CommandExit() }
    let meter = ProgressMeter(enabled: progress, console: console)
    meter.report(0)
    do {
      try await commit(
        image, filename: filename, baseName: baseName, drop: drop, meter: meter,
        rateLimit: rateLimit)
    } catch {
      await image.close()
      meter.end()
      if let failure = error as? ImageCopier.Failure { throw fail(failure.message) }
      throw fail(errorMessage(error))
    }
    await image.close()
    meter.report(100)
    meter.end()
    if !quiet { console.write("Image committed.\n") }
    return 0
  }

  /// Finds the base, reopens it writable, copies and empties.
  private static func commit(
    _ image: BlockBackend, filename: String, baseName: String?, drop: Bool, meter: ProgressMeter,
    rateLimit: UInt64
  ) async throws {
    let top = image.root
    let parent: BlockNode
    if let baseName {
      guard let found = findBackingImage(baseName, above: top) else {
        throw ImageCopier.Failure(
          message: "Did not find '\(baseName)' in the backing chain of '\(filename)'")
      }
      parent = found
    } else {
      guard top.backing != nil else {
        throw ImageCopier.Failure(message: "Image does not have a backing file")
      }
      parent = top
    }
    let base = try await reopenWritable(backingOf: parent)
    do {
      // The job's progress loop reports once before the work is done.
      meter.report(0)
      if base.length < top.length {
        try await base.truncate(to: top.length, exact: false)
      }
      let throttle = rateLimit > 0 ? ThrottledClock(bytesPerSecond: rateLimit) : nil
      try await CommitCopier(top: top, base: base.root, target: base, throttle: throttle).run()
      try await base.flush()
    } catch {
      parent.detach(role: .backing)
      await base.close()
      // QEMU's job callback (common_block_job_cb) keeps only the errno.
      if let error = error as? BlockError {
        throw ImageCopier.Failure(message: "Block job failed: \(error.codeDescription)")
      }
      throw error
    }
    // The chain below the top is done with; a closed child would leave the
    // top without its medium.
    parent.detach(role: .backing)
    await base.close()
    if !drop, let qcow2 = top.driver as? Qcow2Driver {
      do {
        try await qcow2.makeEmpty(top)
      } catch {
        throw ImageCopier.Failure(
          message: "Could not empty \(filename): \(errorMessage(error))")
      }
    }
    try await image.flush()
  }

  /// Replaces `parent`'s read-only backing node by the same image opened
  /// writable (QEMU reopens the base read-write for the commit job), and
  /// returns a backend on it.
  /// A base that is not a format over a plain file (a qcow2 image over
  /// blkdebug, say) is opened again from the name its overlay records.
  private static func reopenWritable(backingOf parent: BlockNode) async throws -> BlockBackend {
    guard let old = parent.backing, let name = baseOpenName(old, below: parent) else {
      throw BlockError(.notSupported, "Spindle can only commit into an image file")
    }
    let format = old.driver.formatName
    parent.detach(role: .backing)
    await old.close()
    var spec = ImageSpec()
    spec.filename = name
    spec.format = format
    // The base inherits the image's discard=unmap (BDRV_O_UNMAP): the
    // commit's zero-writes may unmap.
    spec.node.discard = .unmap
    let base = try await openBackend(spec)
    parent.attach(base.root, role: .backing)
    return base
  }

  /// The name that opens `base` again: its file, or the backing file name
  /// its qcow2 overlay `parent` records, resolved against the overlay's
  /// folder.
  private static func baseOpenName(_ base: BlockNode, below parent: BlockNode) -> String? {
    if let path = imagePath(base) { return path }
    guard let name = (parent.driver as? Qcow2Driver)?.header.backingFile else { return nil }
    return Qcow2Driver.resolveBackingName(name, relativeTo: imagePath(parent))
  }

  /// The file an image node (a format over a file, or a file) reads.
  static func imagePath(_ node: BlockNode) -> String? {
    if let file = node.driver as? FileDriver { return file.filename }
    return (node.file?.driver as? FileDriver)?.filename
  }

  /// QEMU's `bdrv_find_backing_image`: the image in `top`'s chain that some
  /// layer names `name` (or, resolved against that layer's folder, the same
  /// file once both paths are canonical); the node above it is returned.
  static func findBackingImage(_ name: String, above top: BlockNode) -> BlockNode? {
    var current = top
    while let backing = current.backing {
      let recorded = (current.driver as? Qcow2Driver)?.header.backingFile
      if recorded == name { return current }
      if let layerPath = imagePath(current), let backingPath = imagePath(backing) {
        let wanted = name.hasPrefix("/") ? name : directory(of: layerPath) + name
        if let wantedReal = realPath(wanted), wantedReal == realPath(backingPath) {
          return current
        }
      }
      current = backing
    }
    return nil
  }

  private static func directory(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "" }
    return String(path[...slash])
  }

  private static func realPath(_ path: String) -> String? {
    guard let resolved = realpath(path, nil) else { return nil }
    defer { free(resolved) }
    return String(cString: resolved)
  }
}
