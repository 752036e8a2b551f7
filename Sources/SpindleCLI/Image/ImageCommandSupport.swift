import BlockCore

/// qemu-img's `cvtnum`: a size between 0 and `Int64.max`, with its error
/// messages (`Invalid image size specified. ...`); nil after reporting.
@BlockActor
func parseImageNumber(_ text: String, name: String, reporter: Reporter) -> Int64? {
  let parsed = parseQEMUSize(text)
  if case .success(let value) = parsed, value.hexWithSuffix {
    reporter.warning("Using a multiplier suffix on hex numbers is deprecated: \(text)")
  }
  switch parsed {
  case .success(let value) where value.value <= UInt64(Int64.max):
    return Int64(value.value)
  case .failure(.invalid):
    reporter.error("Invalid \(name) specified. You may use k, M, G, T, P or E suffixes for")
    reporter.error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")
  case .success, .failure(.range):
    reporter.error("Invalid \(name) specified. Must be between 0 and \(Int64.max).")
  }
  return nil
}

/// qemu-img's `img_open`: `filename` is a file name, or with `imageOpts` an
/// option string; the probed-raw warning is printed for writable opens. Nil
/// after reporting QEMU's error.
@BlockActor
func openImage(_ filename: String, imageOpts: Bool, spec: ImageSpec, reporter: Reporter) async
  -> BlockBackend?
{
  var spec = spec
  if imageOpts {
    if spec.format != nil {
      reporter.error("--image-opts and --format are mutually exclusive")
      return nil
    }
    spec.options = parseOptionString(filename, impliedKey: "file", reporter: reporter)
    if spec.forceShare, let share = spec.options["force-share"], share != "on" {
      reporter.error("--force-share/-U conflicts with image options")
      return nil
    }
    // `file=NAME` names an existing node in QEMU; qemu-img has none.
    if let reference = spec.options["file"] {
      reporter.error(
        "Could not open '\(filename)': Cannot find device='\(reference)' nor node-name='\(reference)'"
      )
      return nil
    }
  } else {
    spec.filename = filename
  }
  do {
    return try await openReporting(spec, named: filename, reporter: reporter)
  } catch {
    reporter.error("Could not open '\(filename)': \(errorMessage(error))")
    return nil
  }
}

/// Opens `spec` with the driver's diagnostics and error reports going to
/// `reporter`'s console, and prints QEMU's warning when a writable image
/// named `filename` was probed as raw. The tools print their own message
/// for a failure.
@BlockActor
func openReporting(_ spec: ImageSpec, named filename: String, reporter: Reporter) async throws
  -> BlockBackend
{
  var spec = spec
  let console = reporter.console
  spec.diagnostics = { console.writeError($0) }
  spec.errorReport = { reporter.error($0) }
  let backend = try await openBackend(spec)
  if warnsAboutProbedRaw(spec, backend) {
    console.writeError(probedRawWarning(filename, backend: backend))
  }
  return backend
}

extension Reporter {
  /// qemu-img's answer to the getopt results every image command treats
  /// alike: a missing argument or an unrecognized option is a usage error
  /// (status 1), `-h` prints the help (status 0).
  func sharedOptionExit(_ result: Getopt.Result, _ parser: Getopt, console: Console)
    -> CommandExit
  {
    let option = parser.arguments[parser.optind - 1]
    switch result {
    case .missingArgument:
      return usageError("missing argument for option '\(option)'")
    case .option("h"):
      console.write(ImageTool.help)
      return CommandExit(status: 0)
    default:
      return usageError("unrecognized option '\(option)'")
    }
  }
}
