import BlockTestSupport
import Foundation
import Testing

/// `qemu-img convert` with a target backing file (`-B`/`-F`, `-o
/// backing_file`), `--target-image-opts`, `-C`, `-r` and `--salvage`
/// against Spindle's: output, errors, exit statuses, and the images written
/// (contents through their chains and alone, the backing file they name).
@Suite struct DifferentialConvertBackingTests {
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
    try await qemuImg(["create", "-q", "-f", "qcow2", path("base.qcow2"), "1M"])
    try await io("qcow2", "base.qcow2", ["write -P 1 0 512k"])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", path("top.qcow2"),
    ])
    try await io(
      "qcow2", "top.qcow2", ["write -P 2 64k 64k", "write -z 256k 64k", "write -P 3 700k 5k"])
    try await qemuImg(["create", "-q", "-f", "qcow2", path("out.qcow2"), "1M"])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", path("over.qcow2"),
    ])
  }

  static let runs: [[String]] = [
    ["-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", "DIR/top.qcow2", "DIR/o.qcow2"],
    ["-O", "qcow2", "-B", "DIR/base.qcow2", "-F", "qcow2", "DIR/top.qcow2", "DIR/o.qcow2"],
    [
      "-O", "qcow2", "-o", "backing_file=base.qcow2,backing_fmt=qcow2", "DIR/top.qcow2",
      "DIR/o.qcow2",
    ],
    ["-c", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", "DIR/top.qcow2", "DIR/o.qcow2"],
    ["-p", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", "DIR/top.qcow2", "DIR/o.qcow2"],
    ["-n", "-B", "base.qcow2", "-O", "qcow2", "DIR/top.qcow2", "DIR/over.qcow2"],
    ["-O", "qcow2", "-B", "base.qcow2", "DIR/top.qcow2", "DIR/o.qcow2"],
    ["-O", "raw", "-B", "base.qcow2", "-F", "qcow2", "DIR/top.qcow2", "DIR/o.raw"],
    ["-O", "raw", "-F", "qcow2", "DIR/top.qcow2", "DIR/o.raw"],
    ["-O", "qcow2", "-F", "qcow2", "DIR/top.qcow2", "DIR/o.qcow2"],
    [
      "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", "DIR/top.qcow2", "DIR/top.qcow2",
      "DIR/o.qcow2",
    ],
    ["-O", "qcow2", "-B", "missing", "-F", "qcow2", "DIR/top.qcow2", "DIR/o.qcow2"],
    [
      "-n", "--target-is-zero", "-B", "base.qcow2", "-O", "qcow2", "DIR/top.qcow2", "DIR/out.qcow2",
    ],
    ["-n", "-o", "cluster_size=4k", "-O", "qcow2", "DIR/top.qcow2", "DIR/out.qcow2"],
    ["-C", "-O", "qcow2", "DIR/top.qcow2", "DIR/o.qcow2"],
    ["-C", "-n", "-O", "qcow2", "DIR/top.qcow2", "DIR/out.qcow2"],
    ["-C", "-c", "-n", "-O", "qcow2", "DIR/top.qcow2", "DIR/out.qcow2"],
    ["-C", "-S", "0", "-n", "-O", "qcow2", "DIR/top.qcow2", "DIR/out.qcow2"],
    ["-C", "--salvage", "-O", "qcow2", "DIR/top.qcow2", "DIR/o.qcow2"],
    ["--salvage", "-O", "qcow2", "DIR/top.qcow2", "DIR/o.qcow2"],
    ["-r", "1M", "-O", "qcow2", "DIR/top.qcow2", "DIR/o.qcow2"],
    ["-r", "x", "-O", "qcow2", "DIR/top.qcow2", "DIR/o.qcow2"],
    ["--target-image-opts", "-O", "qcow2", "DIR/top.qcow2", "DIR/o.qcow2"],
    ["--target-image-opts", "-n", "DIR/top.qcow2", "driver=qcow2,file.filename=DIR/out.qcow2"],
    [
      "--target-image-opts", "-n", "-O", "qcow2", "DIR/top.qcow2",
      "driver=qcow2,file.filename=DIR/out.qcow2",
    ],
  ]

  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: runs)
  func convertMatches(_ arguments: [String]) async throws {
    let run = try await runImageCommand(["convert"] + arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
    #expect(try run.spindleFileNames() == run.fileNames())
    try await expectSameImages(run)
    for name in try run.fileNames() where name.hasSuffix(".qcow2") && !run.sameBytes(name) {
      func backing(_ directory: String) async throws -> String {
        let info = try await runProcess("qemu-img", ["info", "-U", "\(directory)/\(name)"])
        return info.output.split(separator: "\n").filter { $0.hasPrefix("backing file") }
          .joined(separator: "\n").replacingOccurrences(of: directory, with: "DIR")
      }
      let expected = try await backing(run.qemuDirectory)
      #expect(try await backing(run.spindleDirectory) == expected, "\(name)")
    }
  }
}
