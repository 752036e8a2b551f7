import BlockCore
import BlockDrivers

/// `qemu-img measure`, a qemu-img 7.2 work-alike:
///
///     measure [--output=OFMT] [-O OUTPUT_FMT] [-o OPTIONS]
///             [--size N | [--object OBJECTDEF] [--image-opts] [-f FMT] [-l SNAPSHOT_PARAM] FILENAME]
///
/// The size a new raw or qcow2 image needs (``Qcow2Measure``): for raw the
/// virtual size; for qcow2 the metadata of a fully allocated image plus the
/// source's data clusters, and the source's persistent bitmaps when both
/// sides are qcow2 v3. As in QEMU, a bad option prints getopt's message and
/// the help, with exit status 0.
@BlockActor
enum MeasureTool: ImageSubcommand {
  static let longOptions: [Getopt.LongOption] = [
    .init("help", key: "h"), .init("image-opts"), .init("object", .required),
    .init("output", .required), .init("size", .required), .init("force-share", key: "U"),
  ]

  /// QEMU 7.2's formats that can create images but have no `bdrv_measure`.
  static let formatsWithoutMeasure: Set<String> = [
    "file", "gluster", "host_cdrom", "host_device", "iscsi", "iser", "nfs", "parallels", "qcow",
    "qed", "rbd", "ssh", "vdi", "vhdx", "vmdk", "vpc",
  ]

  static func parseAndRun(_ arguments: [String], reporter: Reporter, console: Console)
    async throws -> Int32
  {
    func fail(_ message: String) -> CommandExit {
      reporter.error(message)
      return CommandExit()
    }
    var parser = Getopt(arguments: arguments, options: "hf:O:o:l:U", longOptions: longOptions) {
      console.writeError($0)
    }
    var format: String?
    var outputFormat = "raw"
    var options: String?
    var snapshot: InternalSnapshotOption?
    var forceShare = false
    var imageOpts = false
    var json = false
    var size: Int64?
    var objects = ObjectRegistry()
    while let result = parser.next() {
      let argument = parser.optarg ?? ""
      switch result {
      case .option("f"): format = argument
      case .option("O"): outputFormat = argument
      case .option("o"):
        guard CreateTool.isValidOptionList(argument) else {
          throw fail("Invalid option list: \(argument)")
        }
        options = options.map { "\($0),\(argument)" } ?? argument
      case .option("l"):
        guard let parsed = InternalSnapshotOption.parse(argument, reporter: reporter) else {
          throw CommandExit()
        }
        snapshot = parsed
      case .option("U"): forceShare = true
      case .option("image-opts"): imageOpts = true
      case .option("object"):
        try objects.add(argument, reporter: reporter, console: console)
      case .option("output"):
        switch argument {
        case "json": json = true
        case "human": json = false
        default: throw fail("--output must be used with human or json as argument.")
        }
      case .option("size"):
        guard let value = parseImageNumber(argument, name: "image size", reporter: reporter)
        else { throw CommandExit() }
        size = value
      default:
        // getopt's message is out; QEMU's help() ends the command successfully.
        console.write(ImageTool.help)
        return 0
      }
    }
    let operands = Array(parser.operands)
    if operands.count > 1 { throw fail("At most one filename argument is allowed.") }
    let filename = operands.first
    if filename == nil && (imageOpts || format != nil || snapshot != nil) {
      throw fail("--image-opts, -f, and -l require a filename argument.")
    }
    if filename != nil && size != nil {
      throw fail("--size N cannot be used together with a filename.")
    }
    if filename == nil && size == nil {
      throw fail("Either --size N or one filename must be specified.")
    }
    var source: BlockBackend?
    if let filename {
      var spec = ImageSpec()
      spec.format = format
      spec.node.readOnly = true
      spec.forceShare = forceShare
      guard
        let opened = await openImage(filename, imageOpts: imageOpts, spec: spec, reporter: reporter)
      else { throw CommandExit() }
      source = opened
      if let snapshot {
        do {
          try await snapshot.load(into: opened.root)
        } catch {
          await opened.close()
          throw fail("Failed to load snapshot: \(errorMessage(error))")
        }
      }
    }
    let measurement: Qcow2Measurement
    do {
      measurement = try await measure(
        source: source?.root, format: outputFormat, options: options, size: size,
        reporter: reporter)
    } catch {
      await source?.close()
      throw error
    }
    await source?.close()
    if json {
      var members: [(String, QObject)] = []
      if let bitmaps = measurement.bitmaps { members.append(("bitmaps", .int(bitmaps))) }
      members.append(("required", .int(measurement.required)))
      members.append(("fully-allocated", .int(measurement.fullyAllocated)))
      console.write(QObject.dict(members).prettyJSON() + "\n")
    } else {
      console.write("required size: \(measurement.required)\n")
      console.write("fully allocated size: \(measurement.fullyAllocated)\n")
      if let bitmaps = measurement.bitmaps { console.write("bitmaps size: \(bitmaps)\n") }
    }
    return 0
  }

  /// QEMU's `bdrv_measure` for `format`, after its checks of the format and
  /// of the options.
  private static func measure(
    source: BlockNode?, format: String, options: String?, size: Int64?, reporter: Reporter
  ) async throws -> Qcow2Measurement {
    func fail(_ message: String) -> CommandExit {
      reporter.error(message)
      return CommandExit()
    }
    guard let list = CreateOptionList.forFormat(format, withProtocol: true) else {
      if formatsWithoutMeasure.contains(format) {
        throw fail("Block driver '\(format)' does not support size measurement")
      }
      if RebaseTool.knownFormats.contains(format) {
        throw fail(
          format == "luks"
            ? "Measuring luks images is not supported by Spindle yet"
            : "Format driver '\(format)' does not support image creation")
      }
      throw fail("Unknown file format '\(format)'")
    }
    var values = CreateOptionValues(list: list)
    if let options {
      do {
        try values.parse(options)
      } catch {
        reporter.error(error.message)
        throw fail("Invalid options for file format '\(format)'")
      }
    }
    if format == "raw" {
      let required = source?.length ?? ((size ?? 0) + 511) / 512 * 512
      return Qcow2Measurement(required: required, fullyAllocated: required, bitmaps: nil)
    }
    var measureOptions = Qcow2MeasureOptions()
    // --size replaces `-o size`, which qcow2 checks even with a source.
    measureOptions.size = size ?? Int64(clamping: values.number("size") ?? 0)
    measureOptions.extendedL2 = values.bool("extended_l2") ?? false
    if let clusterSize = values.number("cluster_size") {
      measureOptions.clusterSize = Int64(clamping: clusterSize)
    }
    // QEMU checks the cluster size first.
    do {
      var clusterOnly = Qcow2MeasureOptions()
      clusterOnly.clusterSize = measureOptions.clusterSize
      clusterOnly.extendedL2 = measureOptions.extendedL2
      try Qcow2Measure.validate(clusterOnly)
    } catch {
      throw fail(errorMessage(error))
    }
    switch values.string("compat") {
    case nil, "1.1": measureOptions.version = 3
    case "0.10": measureOptions.version = 2
    case let other?: throw fail("Invalid compatibility level: '\(other)'")
    }
    if let bits = values.number("refcount_bits") {
      measureOptions.refcountBits = bits > 64 ? 3 : Int(bits)
    }
    switch values.string("preallocation") {
    case nil, "off", "metadata": break
    case "falloc", "full": measureOptions.preallocatesData = true
    case let other?: throw fail("invalid parameter value: \(other)")
    }
    measureOptions.hasBackingFile = values.string("backing_file") != nil
    if values.string("encrypt.format") == "luks" {
      throw fail("Measuring encrypted qcow2 images is not supported by Spindle yet")
    }
    do {
      return try await Qcow2Measure.measure(measureOptions, source: source)
    } catch {
      throw fail(errorMessage(error))
    }
  }
}
