import BlockTestSupport
import Foundation
import Testing

/// `qemu-img dd` against Spindle's: output, errors and exit statuses, and the
/// images written (raw ones byte for byte, qcow2 ones by contents and
/// `qemu-img check`).
@Suite struct DifferentialDdTests {
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
    try await qemuImg(["create", "-q", "-f", "raw", path("r.raw"), "1M"])
    try await io("raw", "r.raw", ["write -P 1 1000 100k", "write -P 2 700k 3k"])
    try await qemuImg(["create", "-q", "-f", "qcow2", path("q.qcow2"), "1M"])
    try await io("qcow2", "q.qcow2", ["write -P 3 64k 64k", "write -P 4 900k 1k"])
  }

  static let runs: [[String]] = [
    ["if=DIR/r.raw", "of=DIR/o.raw"],
    ["-f", "raw", "-O", "qcow2", "if=DIR/r.raw", "of=DIR/o.qcow2", "bs=4k", "count=3", "skip=1"],
    ["if=DIR/q.qcow2", "of=DIR/o.raw", "bs=64k", "skip=2"],
    ["-O", "qcow2", "if=DIR/q.qcow2", "of=DIR/o.qcow2", "bs=1M"],
    ["if=DIR/r.raw", "of=DIR/o.raw", "bs=3000", "count=100"],
    ["if=DIR/r.raw", "of=DIR/o.raw", "bs=1536", "skip=3"],
    ["if=DIR/r.raw", "of=DIR/o.raw", "count=0"], ["if=DIR/r.raw", "of=DIR/o.raw", "skip=10M"],
    ["if=DIR/q.qcow2", "of=DIR/r.raw", "bs=64k", "count=2"],
    ["if=DIR/r.raw", "of=DIR/o.raw", "if=DIR/q.qcow2"], ["if=DIR/r.raw", "of=DIR/r.raw"],
    ["-O", "qcow2", "if=DIR/q.qcow2", "of=DIR/q.qcow2"],
    ["-U", "if=DIR/q.qcow2", "of=DIR/o.raw", "count=1k"],
    ["--image-opts", "if=driver=qcow2,file.filename=DIR/q.qcow2", "of=DIR/o.raw"],
    ["if=DIR/r.raw", "of=DIR/o.raw", "bs=0"], ["if=DIR/r.raw", "of=DIR/o.raw", "bs=3G"],
    ["if=DIR/r.raw", "of=DIR/o.raw", "bs=x"], ["if=DIR/r.raw", "of=DIR/o.raw", "count=-1"],
    ["if=DIR/r.raw", "of=DIR/o.raw", "skip=1x"], ["if=DIR/r.raw", "of=DIR/o.raw", "foo=bar"],
    ["if=DIR/r.raw", "of=DIR/o.raw", "foo"], ["-O", "bogus", "if=DIR/r.raw", "of=DIR/o.raw"],
    ["if=DIR/missing", "of=DIR/o.raw"], ["if=DIR/r.raw", "of=DIR/no/o.raw"],
    ["-f", "qcow2", "if=DIR/r.raw", "of=DIR/o.raw"], [], ["if=DIR/r.raw"], ["-Z"], ["-O"],
  ]

  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: runs)
  func ddMatches(_ arguments: [String]) async throws {
    let run = try await runImageCommand(["dd"] + arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
    #expect(try run.spindleFileNames() == run.fileNames())
    for name in try run.fileNames() where name.hasSuffix(".raw") {
      #expect(run.sameBytes(name), "\(name) differs")
    }
    try await expectSameImages(run)
  }
}
