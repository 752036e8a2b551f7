import BlockCore
import BlockDrivers
import NBD

/// `qemu-img info`, a qemu-img 7.2 work-alike:
///
///     info [--image-opts] [-f FMT] [--output=human|json] [--backing-chain] [-U] FILENAME
///
/// Opens the image read-only without its backing file (as QEMU's
/// `BDRV_O_NO_BACKING`) and prints what QEMU's `bdrv_image_info_dump` or its
/// JSON output prints; with `--backing-chain`, every image of the chain in
/// turn, each opened with the backing format its overlay names. An image
/// named by `--image-opts` or a `json:` name is shown by the name of the
/// file it reads (QEMU's `bdrv_refresh_filename` for plain options).
@BlockActor
enum InfoTool: ImageSubcommand {
  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("format", .required, key: "f"), .init("output", .required),
    .init("backing-chain"), .init("object", .required), .init("image-opts"),
    .init("force-share", key: "U"),
  ]

  static func parseAndRun(_ arguments: [String], reporter: Reporter, console: Console)
    async throws -> Int32
  {
    var parser = Getopt(arguments: arguments, options: ":f:hU", longOptions: longOptions) { _ in }
    var format: String?
    var output = "human"
    var chain = false
    var forceShare = false
    var imageOpts = false
    var objects = ObjectRegistry()
    while let result = parser.next() {
      let argument = parser.optarg ?? ""
      switch result {
      case .missingArgument, .invalid, .option("h"):
        throw reporter.sharedOptionExit(result, parser, console: console)
      case .option("f"): format = argument
      case .option("U"): forceShare = true
      case .option("output"): output = argument
      case .option("backing-chain"): chain = true
      case .option("image-opts"): imageOpts = true
      case .option("object"):
        try objects.add(argument, reporter: reporter, console: console)
      default:
        throw reporter.usageError("unrecognized option '\(parser.arguments[parser.optind - 1])'")
      }
    }
    guard parser.operands.count == 1, var filename = parser.operands.first else {
      throw reporter.usageError("Expecting one image file name")
    }
    guard output == "human" || output == "json" else {
      reporter.error("--output must be used with human or json as argument.")
      throw CommandExit()
    }

    // QEMU's collect_image_info_list.
    var infos: [ImageInfo] = []
    var seen: Set<String> = []
    while true {
      if seen.contains(filename) {
        reporter.error("Backing file '\(filename)' creates an infinite loop.")
        throw CommandExit()
      }
      seen.insert(filename)
      var spec = ImageSpec()
      spec.format = format
      spec.node.readOnly = true
      spec.forceShare = forceShare
      spec.openBacking = false
      // Driver warnings at open (qcow2's invalidated bitmaps) as QEMU's.
      let console = reporter.console
      spec.diagnostics = { console.writeError($0) }
      spec.errorReport = { reporter.error($0) }
      let backend: BlockBackend
      if imageOpts {
        guard
          let opened = await openImage(
            filename, imageOpts: true, spec: spec, reporter: reporter)
        else { throw CommandExit() }
        backend = opened
        // The chain below is named by file names.
        imageOpts = false
      } else {
        spec.filename = filename
        do {
          backend = try await openBackend(spec)
        } catch {
          reporter.error("Could not open '\(filename)': \(errorMessage(error))")
          throw CommandExit()
        }
      }
      // QEMU shows the name it makes of the graph; for a plain file name
      // that is the name as given.
      let isPlainName =
        !(filename.hasPrefix("json:") || filename.hasPrefix("file:"))
        && !NBDFilename.schemes.contains { filename.hasPrefix($0 + ":") }
        && !filename.hasPrefix("rbd:")
      let shownName =
        spec.filename != nil && isPlainName
        ? filename : (NodeFilename.name(of: backend.root) ?? filename)
      let info: ImageInfo
      do {
        info = try await collectImageInfo(backend, filename: shownName)
        await backend.close()
      } catch {
        await backend.close()
        if let failure = error as? ImageInfoFailure, failure.isOpenFailure {
          reporter.error("Could not open '\(filename)': \(failure.message)")
        } else {
          reporter.error("\(filename): \(errorMessage(error))")
        }
        throw CommandExit()
      }
      infos.append(info)
      guard chain, info.backingFilename != nil else { break }
      guard let next = info.fullBackingFilename else { break }
      filename = next
      if let backingFormat = info.backingFormat { format = backingFormat }
    }

    if output == "json" {
      let object: QObject = chain ? .list(infos.map(\.qobject)) : infos[0].qobject
      console.write(object.prettyJSON() + "\n")
    } else {
      console.write(infos.map(\.humanText).joined(separator: "\n"))
    }
    return 0
  }
}
