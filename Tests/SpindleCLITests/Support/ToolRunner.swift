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

/// The QEMU tools the interoperability tests compare against, found by the
/// shared ``ToolLocator`` (tests declare them with `.requires(...)`).
enum QEMU {
  static let qemuIO = ToolLocator.path(of: "qemu-io")
  static let qemuImg = ToolLocator.path(of: "qemu-img")
}

/// Runs a program to completion with `input` on its standard input. The
/// program is started through `env` so that its `argv[0]` is the bare name
/// (qemu-io prints it in option errors), exactly as when a user types it.
func runProcess(
  _ name: String, _ arguments: [String], input: String = "",
  environment: [String: String]? = nil
) async throws -> ToolResult {
  // The program the shared locator finds is the one run: its directory goes
  // first on PATH (unless the caller supplies the whole environment).
  var assignments: [String] = []
  if environment == nil, let path = ToolLocator.path(of: name) {
    let directory = String(path[..<path.lastIndex(of: "/")!])
    let search = ProcessInfo.processInfo.environment["PATH"].map { "\(directory):\($0)" }
    assignments = ["PATH=\(search ?? directory)"]
  }
  let result = try await ChildProcess.run(
    "/usr/bin/env", assignments + [name] + arguments, input: input, environment: environment)
  return ToolResult(
    status: result.termination.status, output: result.output, error: result.error)
}
