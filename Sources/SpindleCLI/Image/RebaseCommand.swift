import BlockCore
import BlockDrivers

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// `qemu-img rebase`, a qemu-img 7.2 work-alike:
///
///     rebase [--object OBJECTDEF] [--image-opts] [-U] [-q] [-f FMT] [-t CACHE] [-T SRC_CACHE]
///            [-p] [-u] -b BACKING_FILE [-F BACKING_FMT] FILENAME
///
/// Safe mode: every range the image does not allocate itself (and, when the
/// new backing file is in the old chain, that the chain above it allocates)
/// is read from the old and the new backing file; sectors that differ are
/// written into the image (zeroes past the old backing file's end), so that
/// its contents do not change. Then, in both modes, the header names the new
/// backing file and format (``Qcow2Driver/changeBackingFile(_:name:format:)``);
/// `-b ""` (or `-u` without `-b`) leaves the image without one.
@BlockActor
enum RebaseTool: ImageSubcommand {
  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("object", .required), .init("image-opts"),
    .init("force-share", key: "U"),
  ]

  /// QEMU 7.2's format drivers (`bdrv_find_format` accepts these names).
  static let knownFormats: Set<String> = [
    "blkdebug", "blklogwrites", "blkverify", "bochs", "cloop", "compress", "copy-before-write",
    "copy-on-read", "dmg", "file", "ftp", "ftps", "gluster", "host_cdrom", "host_device", "http",
    "https", "iscsi", "iser", "luks", "nbd", "nfs", "null-aio", "null-co", "nvme", "parallels",
    "preallocate", "qcow", "qcow2", "qed", "quorum", "raw", "rbd", "replication",
    "snapshot-access", "ssh", "throttle", "vdi", "vhdx", "vmdk", "vpc", "vvfat",
  ]

  /// The parsed command line.
  struct Request {
    var filename = ""
    var format: String?
    var backingName: String?
    var backingFormat: String?
    var cache = CacheMode.writeback
    var sourceCache = CacheMode.writeback
    var unsafe = false
    var forceShare = false
    var imageOpts = false
  }

  static func parseAndRun(_ arguments: [String], reporter: Reporter, console: Console)
    async throws -> Int32
  {
    func fail(_ message: String) -> CommandExit {
      reporter.error(message)
      return CommandExit()
    }
    var parser = Getopt(arguments: arguments, options: ":hf:F:b:upt:T:qU", longOptions: longOptions)
    { _ in }
    var request = Request()
    var cache = "writeback"
    var sourceCache = "writeback"
    var progress = false
    var quiet = false
    var objects = ObjectRegistry()
    while let result = parser.next() {
      let argument = parser.optarg ?? ""
      switch result {
      case .missingArgument, .invalid, .option("h"):
        throw reporter.sharedOptionExit(result, parser, console: console)
      case .option("f"): request.format = argument
      case .option("F"): request.backingFormat = argument
      case .option("b"): request.backingName = argument
      case .option("u"): request.unsafe = true
      case .option("p"): progress = true
      case .option("t"): cache = argument
      case .option("T"): sourceCache = argument
      case .option("q"): quiet = true
      case .option("U"): request.forceShare = true
      case .option("image-opts"): request.imageOpts = true
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
    if !request.unsafe && request.backingName == nil {
      throw reporter.usageError("Must specify backing file (-b) or use unsafe mode (-u)")
    }
    request.filename = filename
    let meter = ProgressMeter(enabled: progress, console: console, minSkip: 2)
    meter.report(0)
    defer { meter.end() }
    guard let cacheMode = parseCacheMode(cache) else {
      throw fail("Invalid cache option: \(cache)")
    }
    guard let sourceCacheMode = parseCacheMode(sourceCache) else {
      throw fail("Invalid source cache option: \(sourceCache)")
    }
    request.cache = cacheMode
    request.sourceCache = sourceCacheMode
    var spec = ImageSpec()
    spec.format = request.format
    spec.node.cache = cacheMode
    spec.openBacking = !request.unsafe
    guard
      let image = await openImage(
        filename, imageOpts: request.imageOpts, spec: spec, reporter: reporter)
    else { throw CommandExit() }
    do {
      try await rebase(image, request, meter: meter, reporter: reporter)
    } catch {
      await image.close()
      throw error
    }
    await image.close()
    meter.report(100)
    return 0
  }

  private static func rebase(
    _ image: BlockBackend, _ request: Request, meter: ProgressMeter, reporter: Reporter
  ) async throws {
    func fail(_ message: String) -> CommandExit {
      reporter.error(message)
      return CommandExit()
    }
    if let format = request.backingFormat, !knownFormats.contains(format) {
      throw fail("Invalid format name: '\(format)'")
    }
    if !request.unsafe, let name = request.backingName {
      var newBacking: BlockBackend?
      var prefix: BlockNode?
      if !name.isEmpty {
        let path = resolvedBackingPath(name, overlay: CommitTool.imagePath(image.root))
        if let above = CommitTool.findBackingImage(path, above: image.root) {
          prefix = above.backing
        } else {
          var spec = ImageSpec()
          spec.filename = path
          spec.format = request.backingFormat
          spec.node.readOnly = true
          spec.node.cache = request.sourceCache
          spec.forceShare = request.forceShare
          do {
            newBacking = try await openBackend(spec)
          } catch {
            throw fail("Could not open new backing file '\(name)': \(errorMessage(error))")
          }
        }
      }
      do {
        let copy = RebaseCopy(
          image: image.root, oldBacking: image.root.backing, newBacking: prefix ?? newBacking?.root,
          prefix: prefix, meter: meter)
        try await copy.run()
      } catch let failure as ImageCopier.Failure {
        await newBacking?.close()
        throw fail(failure.message)
      }
      await newBacking?.close()
    }
    try await changeBackingFile(image.root, request, reporter: reporter)
  }

  /// QEMU's `bdrv_get_full_backing_filename_from_filename`: a relative name
  /// is relative to the overlay's folder.
  static func resolvedBackingPath(_ name: String, overlay: String?) -> String {
    if name.hasPrefix("/") || name.hasPrefix("json:") { return name }
    if let colon = name.firstIndex(of: ":"), !name[..<colon].contains("/") { return name }
    guard let overlay, let slash = overlay.lastIndex(of: "/") else { return name }
    return String(overlay[...slash]) + name
  }

  /// QEMU's `bdrv_change_backing_file` and img_rebase's reports of its errors.
  private static func changeBackingFile(_ node: BlockNode, _ request: Request, reporter: Reporter)
    async throws
  {
    let name = request.backingName.flatMap { $0.isEmpty ? nil : $0 }
    let format = name == nil ? nil : request.backingFormat
    let target = request.backingName ?? "(null)"
    func fail(_ reason: String) -> CommandExit {
      reporter.error("Could not change the backing file to '\(target)': \(reason)")
      return CommandExit()
    }
    guard let qcow2 = node.driver as? Qcow2Driver else {
      throw fail(BlockError.notSupported().codeDescription)
    }
    if name != nil && format == nil {
      throw fail("backing format must be specified")
    }
    do {
      try await qcow2.changeBackingFile(node, name: name, format: format)
    } catch let error as BlockError {
      if error.code.rawValue == ENOSPC { throw fail("No space left in the file header") }
      throw fail(error.codeDescription)
    }
  }
}

/// The copy of safe rebasing: what the image shows from its old backing file
/// and would no longer show from the new one is written into the image.
@BlockActor
struct RebaseCopy {
  let image: BlockNode
  let oldBacking: BlockNode?
  let newBacking: BlockNode?
  /// The new backing file when it is in the old chain.
  let prefix: BlockNode?
  let meter: ProgressMeter

  func run() async throws {
    let size = image.length
    let chunk = Int64(ImageCopier.chunkSize)
    let oldSize = oldBacking?.length ?? 0
    let newSize = newBacking?.length ?? 0
    let step: Float = size == 0 ? 0 : 100 / Float(size / min(size, chunk))
    let oldData = IOVector(allocating: Int(chunk))
    let newData = IOVector(allocating: Int(chunk))
    var offset: Int64 = 0
    while offset < size {
      var count = min(chunk, size - offset)
      let allocated: Bool
      do {
        (allocated, count) = try await image.isAllocated(offset: offset, bytes: count)
        if !allocated, let prefix, let oldBacking {
          let (depth, above) = try await oldBacking.isAllocatedAbove(
            base: prefix, offset: offset, bytes: count)
          count = above
          if depth == 0 {
            offset += count
            continue
          }
        }
      } catch {
        throw ImageCopier.Failure(
          message: "error while reading image metadata: \(errorMessage(error))")
      }
      if allocated {
        offset += count
        continue
      }
      let oldIsZero = offset >= oldSize
      if oldIsZero {
        oldData.fill(0)
      } else {
        count = min(count, oldSize - offset)
        do {
          try await oldBacking?.read(at: offset, into: oldData.slice(0, Int(count)))
        } catch {
          throw ImageCopier.Failure(message: "error while reading from old backing file")
        }
      }
      if offset >= newSize || newBacking == nil {
        newData.fill(0)
      } else {
        count = min(count, newSize - offset)
        do {
          try await newBacking?.read(at: offset, into: newData.slice(0, Int(count)))
        } catch {
          throw ImageCopier.Failure(message: "error while reading from new backing file")
        }
      }
      try await writeDifferences(
        at: offset, count: Int(count), old: oldData, new: newData, oldIsZero: oldIsZero)
      meter.advance(by: step)
      offset += count
    }
  }

  /// QEMU's `compare_buffers` walk: runs of 512-byte sectors that differ are
  /// written (zero-written when the old side is zeroes).
  private func writeDifferences(
    at offset: Int64, count: Int, old: IOVector, new: IOVector, oldIsZero: Bool
  ) async throws {
    let sector = 512
    var position = 0
    while position < count {
      let differs = !same(old, new, at: position, count: min(sector, count - position))
      var end = min(position + sector, count)
      while end < count {
        let next = min(end + sector, count)
        if same(old, new, at: end, count: next - end) == differs { break }
        end = next
      }
      if differs {
        do {
          if oldIsZero {
            try await image.writeZeroes(at: offset + Int64(position), count: Int64(end - position))
          } else {
            try await image.write(
              at: offset + Int64(position), from: old.slice(position, end - position))
          }
        } catch {
          throw ImageCopier.Failure(
            message: "Error while writing to COW image: \(errorCodeText(error))")
        }
      }
      position = end
    }
  }

  /// Whether two single-buffer vectors hold the same bytes in a range.
  private func same(_ first: IOVector, _ second: IOVector, at offset: Int, count: Int) -> Bool {
    first.firstMismatch(with: second, at: offset, count: count) == nil
  }

  private func errorCodeText(_ error: any Error) -> String {
    (error as? BlockError).map(\.codeDescription) ?? "\(error)"
  }
}
