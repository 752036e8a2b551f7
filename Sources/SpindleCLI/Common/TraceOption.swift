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
/// file are checked the same way. Returns false when the tool must exit with
/// status 1 (an unknown parameter, an unreadable events file).
@BlockActor
func applyTraceOption(_ text: String, reporter: Reporter) -> Bool {
  let options = parseOptionString(text, impliedKey: "enable", reporter: reporter)
  if let unknown = options.values.keys.sorted().first(where: {
    !["enable", "events", "file"].contains($0)
  }) {
    reporter.error("Invalid parameter '\(unknown)'")
    return false
  }
  func enable(_ pattern: String) {
    let name = pattern.hasPrefix("-") ? String(pattern.dropFirst()) : pattern
    if !pattern.contains("*") && !pattern.contains("?") {
      reporter.warning("trace event '\(name)' does not exist")
    }
  }
  if let pattern = options["enable"] { enable(pattern) }
  if let path = options["events"] {
    guard let contents = readTextFile(path) else {
      reporter.console.writeError(
        "\(reporter.programName):\(path): \(Errno.describe(Errno(rawValue: errno)))\n")
      return false
    }
    for line in contents.split(separator: "\n") {
      let event = line.trimmingPrefix(while: \.isWhitespace)
      let trimmed = String(event.reversed().drop(while: \.isWhitespace).reversed())
      if !trimmed.isEmpty && !trimmed.hasPrefix("#") { enable(trimmed) }
    }
  }
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
