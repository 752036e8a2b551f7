import BlockCore
import BlockTestSupport
import Foundation
import SpindleCLI

/// What a tool run printed and how it ended.
struct ToolResult: Sendable, Equatable, CustomStringConvertible {
  var status: Int32
  var output: String
  var error: String

  var description: String {
    "status \(status)\n--- stdout\n\(output)--- stderr\n\(error)---"
  }

  /// The result with run-dependent numbers masked (see ``maskTimings(_:)``)
  /// and `path` replaced by `IMG`.
  func masked(replacing path: String? = nil) -> ToolResult {
    func clean(_ text: String) -> String {
      var text = maskTimings(text)
      if let path { text = text.replacingOccurrences(of: path, with: "IMG") }
      return text
    }
    return ToolResult(status: status, output: clean(output), error: clean(error))
  }
}

/// Replaces what differs between two runs of the same commands: qemu-io's
/// elapsed times and rates (`00.00 sec (1.816 MiB/sec and 464.8942 ops/sec)`,
/// `5:42:31.29 (...)`), the time and rates of `-C` lines, and qemu-img bench's
/// run time. Byte counts, offsets and sizes stay.
func maskTimings(_ text: String) -> String {
  var lines: [String] = []
  for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
    var line = String(line)
    // Regexes are slow; most lines (hexdumps, reports) have nothing to mask.
    if line.contains(" (") {
      line.replace(#/\d+\.\d\d sec \(.*\)$/#, with: "TIME")
      line.replace(#/\d+:\d\d:\d\d\.\d\d \(.*\)$/#, with: "TIME")
    }
    if line.contains(",") {
      line.replace(#/^(\d+,\d+),\d+:\d\d:\d\d\.\d\d,[^,]+,[^,]+$/#) { "\($0.output.1),TIME" }
    }
    if line.hasPrefix("Run completed") {
      line.replace(#/^Run completed in \d+\.\d+ seconds\.$/#, with: "Run completed in TIME")
    }
    lines.append(line)
  }
  return lines.joined(separator: "\n")
}

/// Runs spindle in this process (``Spindle/run(_:console:input:)``) with
/// `arguments` (the first being the name it is invoked by, such as `qemu-io`),
/// commands read from `input`, and its output captured.
@BlockActor
func runSpindle(_ arguments: [String], input: String = "") async -> ToolResult {
  let console = Console.capture()
  let status = await Spindle.run(arguments, console: console, input: StringLineInput(input))
  return ToolResult(status: status, output: console.output, error: console.error)
}

/// The QEMU tools the interoperability tests compare against.
enum QEMU {
  /// The path of a program found on `PATH`, if any.
  static func find(_ name: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for directory in path.split(separator: ":") {
      let candidate = "\(directory)/\(name)"
      if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    return nil
  }

  static let qemuIO = find("qemu-io")
  static let qemuImg = find("qemu-img")
  static var hasQemuIO: Bool { qemuIO != nil }
  static var hasQemuImg: Bool { qemuImg != nil }
}

/// Runs a program to completion with `input` on its standard input. The
/// program is started through `env` so that its `argv[0]` is the bare name
/// (qemu-io prints it in option errors), exactly as when a user types it.
func runProcess(
  _ name: String, _ arguments: [String], input: String = "",
  environment: [String: String]? = nil
) async throws -> ToolResult {
  let result = try await ChildProcess.run(
    "/usr/bin/env", [name] + arguments, input: input, environment: environment)
  return ToolResult(
    status: result.termination.status, output: result.output, error: result.error)
}
