import BlockTestSupport
import Foundation
import Testing

/// `qemu-img commit` against Spindle's: output, errors and exit statuses, and
/// every image afterwards (contents through its chain and alone, `qemu-img
/// check` of Spindle's).
@Suite struct DifferentialCommitTests {
  /// The images, built once.
  static let template = Task { try await ImageTemplate.build(build) }

  static func setup(_ directory: String) async throws {
    try await template.value.copy(into: directory)
  }

  @Sendable static func build(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    func io(_ format: String, _ name: String, _ commands: [String]) async throws {
      let result = try await runProcess(
        "qemu-io", ["-f", format] + commands.flatMap { ["-c", $0] } + [path(name)])
      #expect(result.status == 0, "\(result)")
    }
    func overlay(_ name: String, on backing: String, format: String, size: String? = nil)
      async throws
    {
      try await qemuImg(
        ["create", "-q", "-f", "qcow2", "-b", backing, "-F", format, path(name)]
          + (size.map { [$0] } ?? []))
    }
    try await qemuImg(["create", "-q", "-f", "qcow2", path("base.qcow2"), "1M"])
    try await io("qcow2", "base.qcow2", ["write -P 1 0 256k", "write -P 4 768k 64k"])
    try await overlay("mid.qcow2", on: "base.qcow2", format: "qcow2")
    try await io("qcow2", "mid.qcow2", ["write -P 2 64k 64k", "write -z 192k 32k"])
    try await overlay("top.qcow2", on: "mid.qcow2", format: "qcow2", size: "2M")
    try await io(
      "qcow2", "top.qcow2",
      ["write -P 3 100k 10k", "write -z 768k 64k", "write -P 5 1536k 100k"])
    try await qemuImg(["create", "-q", "-f", "raw", path("r.raw"), "1M"])
    try await io("raw", "r.raw", ["write -P 6 0 1M"])
    try await overlay("over.qcow2", on: "r.raw", format: "raw")
    try await io("qcow2", "over.qcow2", ["write -P 7 4k 8k", "write -z 512k 128k"])
    try await overlay("empty.qcow2", on: "base.qcow2", format: "qcow2")
    try await overlay("grow.qcow2", on: "r.raw", format: "raw", size: "3M")
    try await io("qcow2", "grow.qcow2", ["write -P 8 900k 200k", "write -P 9 2M 1k"])
    try await qemuImg(["create", "-q", "-f", "qcow2", path("cbase.qcow2"), "1M"])
    try await qemuImg([
      "convert", "-q", "-c", "-O", "qcow2", "-B", "cbase.qcow2", "-F", "qcow2", path("r.raw"),
      path("ctop.qcow2"),
    ])
    try await qemuImg(["create", "-q", "-f", "qcow2", path("alone.qcow2"), "1M"])
  }

  static let runs: [[String]] = [
    ["DIR/top.qcow2"], ["-d", "DIR/top.qcow2"], ["-b", "DIR/base.qcow2", "DIR/top.qcow2"],
    ["-b", "base.qcow2", "DIR/top.qcow2"], ["-b", "DIR/mid.qcow2", "DIR/top.qcow2"],
    ["-b", "mid.qcow2", "-q", "DIR/top.qcow2"], ["-b", "DIR/x", "DIR/top.qcow2"],
    ["-b", "top.qcow2", "DIR/top.qcow2"], ["DIR/over.qcow2"], ["DIR/grow.qcow2"],
    ["DIR/ctop.qcow2"], ["-q", "DIR/mid.qcow2"],
    ["-f", "qcow2", "-t", "none", "DIR/mid.qcow2"], ["-r", "1M", "DIR/over.qcow2"],
    ["-p", "DIR/empty.qcow2"], ["-p", "-d", "DIR/empty.qcow2"],
    ["--image-opts", "driver=qcow2,file.filename=DIR/top.qcow2"],
    ["DIR/alone.qcow2"], ["-f", "raw", "DIR/top.qcow2"], ["DIR/r.raw"], ["DIR/missing"],
    [], ["DIR/a", "DIR/b"], ["-Z", "DIR/top.qcow2"], ["-t", "bogus", "DIR/top.qcow2"],
    ["-r", "x", "DIR/top.qcow2"], ["-r", "-5", "DIR/top.qcow2"], ["-b"],
  ]

  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: runs)
  func commitMatches(_ arguments: [String]) async throws {
    let run = try await runImageCommand(["commit"] + arguments, setup: Self.setup)
    // How often the job's loop reports progress depends on timing.
    #expect(withoutProgress(run.spindle) == withoutProgress(run.qemu), "\(run)")
    if arguments.contains("-p") {
      #expect(run.spindle.output.hasPrefix("    (0.00/100%)\r"), "\(run)")
      #expect(run.spindle.output.contains("    (100.00/100%)\r\n"), "\(run)")
    }
    try await expectSameImages(run)
  }
}

/// The result with qemu-img's progress lines (`    (N/100%)` and carriage
/// returns, then a newline) removed.
func withoutProgress(_ result: ToolResult) -> ToolResult {
  var result = result
  let progress = #/(    \([0-9.]+/100%\)\r)+\n/#.matchingSemantics(.unicodeScalar)
  result.output = result.output.replacing(progress, with: "")
  return result
}

/// Every image of a run has the same contents in both directories, through
/// its chain and alone (qcow2 images without their backing file), and
/// Spindle's qcow2 images pass `qemu-img check`; files with the same bytes
/// are taken as they are.
func expectSameImages(_ run: ImageCommandRun) async throws {
  for name in try run.fileNames() where !run.sameBytes(name) {
    guard try run.spindleFileNames().contains(name) else {
      Issue.record("\(name) is missing from Spindle's directory")
      continue
    }
    let compared = try await run.compareContents(name)
    #expect(compared.status == 0, "\(name): \(compared)")
    guard name.hasSuffix(".qcow2") else { continue }
    func alone(_ directory: String) -> String {
      #"json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":"\#(directory)/\#(name)"}}"#
    }
    let aloneCompared = try await runProcess(
      "qemu-img", ["compare", alone(run.qemuDirectory), alone(run.spindleDirectory)])
    #expect(aloneCompared.status == 0, "\(name) alone: \(aloneCompared)")
    let check = try await run.checkSpindleImage(name)
    #expect(check.status == 0, "\(name): \(check)")
  }
}
