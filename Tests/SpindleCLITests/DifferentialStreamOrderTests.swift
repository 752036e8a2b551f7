import BlockTestSupport
import Foundation
import Testing

/// The order in which standard output and standard error reach one pipe
/// (`2>&1`) or a terminal, for the spindle executable invoked as qemu-io or
/// qemu-img and for the real tools: C's stdio buffering decides it (stdout
/// fully buffered on a pipe, line-buffered on a terminal, stderr unbuffered,
/// stdout flushed at prompts, progress lines and exit), so error messages
/// come before the output still buffered.
@Suite(
  .requires("qemu-img", "qemu-io"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct DifferentialStreamOrderTests {
  /// `t.qcow2`: 1 MiB with 64 KiB of a pattern at 0. `t.raw`: 1 MiB of data.
  static func setup(_ directory: String) async throws {
    try await qemuImg(["create", "-q", "-f", "qcow2", "\(directory)/t.qcow2", "1M"])
    let qcow2 = try await runProcess("qemu-io", ["-c", "write -P 7 0 64k", "\(directory)/t.qcow2"])
    #expect(qcow2.status == 0, "\(qcow2)")
    try await qemuImg(["create", "-q", "-f", "raw", "\(directory)/t.raw", "1M"])
    let raw = try await runProcess(
      "qemu-io", ["-f", "raw", "-c", "write -P 1 0 1M", "\(directory)/t.raw"])
    #expect(raw.status == 0, "\(raw)")
  }

  /// A raw `json:` image over blkdebug failing every request of `iotype`
  /// (at `sector` when given).
  static func failing(_ iotype: String, sector: Int? = nil) -> String {
    let at = sector.map { #","sector":\#($0)"# } ?? ""
    return
      #"json:{"driver":"raw","file":{"driver":"blkdebug","inject-error":[{"event":"none","iotype":"\#(iotype)"\#(at),"errno":5}],"image":{"driver":"file","filename":"DIR/t.raw"}}}"#
  }

  struct Run: Sendable, CustomTestStringConvertible {
    var tool: String
    var arguments: [String]
    var input: String?
    /// Run under a pseudo-terminal (`script`) instead of a pipe.
    var terminal = false

    var testDescription: String {
      "\(tool) \(arguments.joined(separator: " "))\(terminal ? " (terminal)" : "")"
    }
  }

  static let runs: [Run] = [
    Run(
      tool: "qemu-io",
      arguments: [
        "-c", "read 0 512", "-c", "open -o driver=foo x", "-c", "read 0 512", "DIR/t.qcow2",
      ]),
    // Output longer than a pipe's block: it goes out in whole blocks.
    Run(
      tool: "qemu-io",
      arguments: ["-c", "read -v 0 6k", "-c", "open x", "-c", "read -v 0 6k", "DIR/t.qcow2"]),
    Run(
      tool: "qemu-io", arguments: ["DIR/t.qcow2"],
      input: "read 0 512\nopen -o driver=foo x\nread -v 0 16\n"),
    Run(tool: "qemu-io", arguments: ["-c", "read 0 512", "-c", "sigraise 15", "DIR/t.qcow2"]),
    Run(tool: "qemu-io", arguments: ["-c", "read 0 512", "-c", "abort", "DIR/t.qcow2"]),
    Run(tool: "qemu-img", arguments: ["bench", "-w", "-c", "4", "-f", "raw", failing("write")]),
    Run(
      tool: "qemu-img",
      arguments: ["convert", "-p", "--salvage", failing("block-status", sector: 1000), "DIR/o"]),
    Run(tool: "qemu-img", arguments: ["info", "-f", "raw", "DIR/t.raw", "DIR/missing"]),
    Run(tool: "qemu-img", arguments: ["map", failing("block-status", sector: 8)]),
    Run(
      tool: "qemu-io",
      arguments: [
        "-c", "read 0 512", "-c", "open -o driver=foo x", "-c", "read 0 512", "DIR/t.qcow2",
      ],
      terminal: true),
  ]

  @Test(arguments: runs)
  func sameInterleaving(_ run: Run) async throws {
    if run.terminal && !ToolRequirement.isAvailable("script") { return }
    let fixture = try ImageFixture()
    let links = try SpindleExecutable.links()
    var transcripts: [String] = []
    var terminations: [ChildProcess.Termination] = []
    for (name, tools) in [("q", qemuDirectory(run.tool)), ("s", links.directory.path)] {
      let directory = fixture.path(name)
      try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
      try await Self.setup(directory)
      let arguments =
        [run.tool]
        + run.arguments.map {
          $0.replacingOccurrences(of: "DIR", with: directory)
        }
      let command: [String]
      if run.terminal {
        command = [
          "script", "-qec", arguments.map(shellQuoted).joined(separator: " "), "/dev/null",
        ]
      } else {
        command = arguments
      }
      let result = try await ChildProcess.run(
        "/usr/bin/env", ["PATH=\(tools):/usr/bin:/bin"] + command, input: run.input,
        mergeError: true)
      // (A terminal ends lines with CR LF.)
      let output = result.output.replacingOccurrences(of: "\r\n", with: "\n")
      transcripts.append(maskTimings(output).replacingOccurrences(of: directory, with: "DIR"))
      terminations.append(result.termination)
    }
    #expect(
      transcripts[1] == transcripts[0], "QEMU's:\n\(transcripts[0])\nSpindle's:\n\(transcripts[1])")
    #expect(terminations[1] == terminations[0])
  }

  /// The directory holding the real `tool`.
  private func qemuDirectory(_ tool: String) -> String {
    let path = ToolLocator.path(of: tool) ?? "/usr/bin/\(tool)"
    return String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
  }

  private func shellQuoted(_ word: String) -> String {
    "'" + word.replacingOccurrences(of: "'", with: #"'\''"#) + "'"
  }
}
