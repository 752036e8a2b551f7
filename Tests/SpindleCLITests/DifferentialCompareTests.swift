import BlockTestSupport
import Foundation
import Testing

/// `qemu-img compare` against Spindle's: verdicts, mismatch offsets, strict
/// mode, size mismatches, progress lines, errors and exit statuses.
@Suite struct DifferentialCompareTests {
  static func setup(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    func io(_ format: String, _ name: String, _ commands: [String]) async throws {
      let result = try await runProcess(
        "qemu-io", ["-f", format] + commands.flatMap { ["-c", $0] } + [path(name)])
      #expect(result.status == 0, "\(result)")
    }
    try await qemuImg(["create", "-q", "-f", "raw", path("a.raw"), "1M"])
    try await qemuImg(["create", "-q", "-f", "raw", path("b.raw"), "2M"])
    try await io("raw", "b.raw", ["write -P 1 1000 10"])
    try await qemuImg(["create", "-q", "-f", "qcow2", path("c.qcow2"), "1M"])
    try await qemuImg(["create", "-q", "-f", "raw", path("base.raw"), "4M"])
    try await io(
      "raw", "base.raw",
      ["write -P 1 0 64k", "write -P 3 1M 4k", "write -z 2M 64k", "write -P 9 3M 100k"])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", path("mid.qcow2"),
    ])
    try await io("qcow2", "mid.qcow2", ["write -P 2 64k 64k", "write -z 256k 64k"])
    try await qemuImg(["convert", "-O", "raw", path("mid.qcow2"), path("mid.raw")])
    try FileManager.default.copyItem(atPath: path("mid.raw"), toPath: path("mid2.raw"))
    try await io("raw", "mid2.raw", ["write -P 7 3000000 1"])
    try await qemuImg(["convert", "-c", "-O", "qcow2", path("mid.qcow2"), path("midc.qcow2")])
    try await qemuImg(["create", "-q", "-f", "raw", path("big.raw"), "5M"])
    try await io(
      "raw", "big.raw",
      [
        "write -P 1 0 64k", "write -P 3 1M 4k", "write -z 2M 64k", "write -P 9 3M 100k",
        "write -P 2 64k 64k", "write -P 0 256k 64k",
      ])
    try FileManager.default.copyItem(atPath: path("big.raw"), toPath: path("big2.raw"))
    try await io("raw", "big2.raw", ["write -P 5 4600k 1"])
  }

  static let runs: [[String]] = [
    ["DIR/a.raw", "DIR/c.qcow2"], ["-s", "DIR/a.raw", "DIR/c.qcow2"],
    ["DIR/a.raw", "DIR/b.raw"], ["DIR/b.raw", "DIR/a.raw"], ["-q", "DIR/a.raw", "DIR/b.raw"],
    ["-s", "DIR/a.raw", "DIR/b.raw"], ["-f", "raw", "-F", "raw", "DIR/a.raw", "DIR/c.qcow2"],
    ["-p", "DIR/a.raw", "DIR/c.qcow2"], ["-p", "DIR/mid.qcow2", "DIR/mid.raw"],
    ["DIR/mid.qcow2", "DIR/mid2.raw"], ["-p", "DIR/midc.qcow2", "DIR/mid.raw"],
    ["-s", "DIR/midc.qcow2", "DIR/mid.qcow2"], ["-s", "DIR/mid.raw", "DIR/mid.raw"],
    ["-s", "DIR/mid.qcow2", "DIR/mid.raw"], ["DIR/mid.qcow2", "DIR/big.raw"],
    ["-p", "DIR/big.raw", "DIR/mid.qcow2"], ["DIR/big2.raw", "DIR/mid.qcow2"],
    ["-U", "-f", "qcow2", "-F", "raw", "DIR/mid.qcow2", "DIR/big2.raw"],
    ["-T", "none", "DIR/mid.qcow2", "DIR/mid.raw"],
    [
      "--image-opts", "driver=qcow2,file.filename=DIR/mid.qcow2",
      "driver=raw,file.filename=DIR/mid.raw",
    ],
    ["--image-opts", "DIR/a.raw", "DIR/c.qcow2"],
    ["-U", "--image-opts", "driver=raw,file.filename=DIR/a.raw,force-share=off", "DIR/a.raw"],
    [], ["DIR/a.raw"], ["DIR/a.raw", "DIR/nonexistent"], ["-p", "DIR/nonexistent", "DIR/a.raw"],
    ["-T", "bogus", "DIR/a.raw", "DIR/a.raw"], ["-Z", "DIR/a.raw", "DIR/a.raw"],
  ]

  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: runs)
  func compareMatches(_ arguments: [String]) async throws {
    let run = try await runImageCommand(["compare"] + arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
  }
}
