import BlockCore
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// QEMU's `-T [[enable=]PATTERN][,events=FILE][,file=FILE]` (`trace_opt_parse`).
///
/// Spindle has no trace events, so it does what QEMU does when no event
/// matches: a pattern without wildcards gets the warning `trace event 'x' does
/// not exist`, a glob enables nothing silently, and the events of an `events`
/// file are checked the same way (the warning located `PROGRAM:FILE:LINE:`,
/// as QEMU's). Returns false when the tool must exit with status 1 (an
/// unknown parameter, an unreadable events file).
@BlockActor
func applyTraceOption(_ text: String, reporter: Reporter) -> Bool {
  parseTraceOption(text, reporter: reporter, recognizesHelp: false) != nil
}

/// What a `-T` option asked for beyond enabling events.
struct TraceRequest {
  /// `help` (or `?`) as the pattern: list the trace events and exit 0.
  var wantsHelp = false
  /// `file=`: the trace log, opened (and truncated) once options are checked.
  var logFile: String?
}

/// Parses `-T` as ``applyTraceOption(_:reporter:)`` does; with
/// `recognizesHelp`, `help` or `?` as the pattern asks for the event list
/// instead of being a missing event (qemu-nbd). nil after reporting an error.
@BlockActor
func parseTraceOption(_ text: String, reporter: Reporter, recognizesHelp: Bool) -> TraceRequest? {
  let options = parseOptionString(text, impliedKey: "enable", reporter: reporter)
  if let unknown = options.values.keys.sorted().first(where: {
    !["enable", "events", "file"].contains($0)
  }) {
    reporter.error("Invalid parameter '\(unknown)'")
    return nil
  }
  var request = TraceRequest(logFile: options["file"])
  func enable(_ pattern: String, location: String = "") {
    let name = pattern.hasPrefix("-") ? String(pattern.dropFirst()) : pattern
    if !pattern.contains("*") && !pattern.contains("?") {
      reporter.console.writeError(
        "\(reporter.programName)\(location): warning: trace event '\(name)' does not exist\n")
    }
  }
  if let pattern = options["enable"] {
    if recognizesHelp && (pattern == "help" || pattern == "?") {
      request.wantsHelp = true
      return request
    }
    enable(pattern)
  }
  if let path = options["events"] {
    guard let contents = readTextFile(path) else {
      reporter.console.writeError(
        "\(reporter.programName):\(path): \(Errno.describe(Errno(rawValue: errno)))\n")
      return nil
    }
    for (index, line) in contents.split(separator: "\n", omittingEmptySubsequences: false)
      .enumerated()
    {
      let event = line.trimmingPrefix(while: \.isWhitespace)
      let trimmed = String(event.reversed().drop(while: \.isWhitespace).reversed())
      if !trimmed.isEmpty && !trimmed.hasPrefix("#") {
        enable(trimmed, location: ":\(path):\(index + 1)")
      }
    }
  }
  return request
}

/// Opens (creating or truncating) the trace log `-T file=` names, as QEMU's
/// `trace_init_file`; Spindle writes no events to it. False after
/// reporting QEMU's error.
@BlockActor
func openTraceLog(_ path: String, reporter: Reporter) -> Bool {
  let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o666)
  guard fd >= 0 else {
    reporter.error("Error opening logfile \(path): \(Errno.describe(Errno(rawValue: errno)))")
    return false
  }
  close(fd)
  return true
}

/// The contents of a file, or nil with `errno` set.
private func readTextFile(_ path: String) -> String? {
  let fd = open(path, O_RDONLY | O_CLOEXEC)
  guard fd >= 0 else { return nil }
  defer { close(fd) }
  var bytes: [UInt8] = []
  var chunk = [UInt8](repeating: 0, count: 4096)
  while true {
    let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    if count < 0 {
      if errno == EINTR { continue }
      return nil
    }
    if count == 0 { break }
    bytes.append(contentsOf: chunk[..<count])
  }
  return String(decoding: bytes, as: UTF8.self)
}
