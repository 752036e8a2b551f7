import BlockTestSupport
import Foundation
import Testing

/// `qemu-img map` against Spindle's: human and JSON output over raw files
/// with holes, qcow2 chains with data, zero and compressed clusters at
/// several depths, ranges, and errors.
@Suite struct DifferentialMapTests {
  static func setup(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    func io(_ format: String, _ name: String, _ commands: [String]) async throws {
      let result = try await runProcess(
        "qemu-io", ["-f", format] + commands.flatMap { ["-c", $0] } + [path(name)])
      #expect(result.status == 0, "\(result)")
    }
    try await qemuImg(["create", "-q", "-f", "raw", path("base.raw"), "2M"])
    try await io("raw", "base.raw", ["write -P 1 0 64k", "write -P 3 1M 4k"])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", path("mid.qcow2"),
    ])
    try await io(
      "qcow2", "mid.qcow2", ["write -P 2 64k 64k", "write -z 256k 64k", "write -P 4 1536k 64k"])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", path("top.qcow2"), "3M",
    ])
    try await io(
      "qcow2", "top.qcow2",
      ["write -P 5 0 4k", "write -z 1536k 64k", "write -P 6 2560k 64k"])
    _ = try FileManager.default.copyItem(atPath: path("top.qcow2"), toPath: path("packed.qcow2"))
    try await io("qcow2", "packed.qcow2", ["write -c -P 7 2M 64k"])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-u", "-b", "nonexistent", "-F", "raw",
      path("dangling.qcow2"), "1M",
    ])
    try await qemuImg(["create", "-q", "-f", "qcow2", path("empty.qcow2"), "10G"])
    try Data("hi\n".utf8).write(to: URL(fileURLWithPath: path("small")))
  }

  static let runs: [[String]] = [
    ["DIR/base.raw"], ["--output=json", "DIR/base.raw"],
    ["DIR/mid.qcow2"], ["--output=json", "DIR/mid.qcow2"],
    ["DIR/top.qcow2"], ["--output=json", "DIR/top.qcow2"],
    ["--output=json", "--start-offset=64k", "--max-length=1M", "DIR/top.qcow2"],
    ["--start-offset", "1000", "--max-length", "5000", "--output=json", "DIR/top.qcow2"],
    ["--start-offset=4M", "DIR/top.qcow2"], ["--max-length=0", "--output=json", "DIR/top.qcow2"],
    ["--output=json", "DIR/packed.qcow2"], ["DIR/packed.qcow2"],
    ["DIR/dangling.qcow2"], ["-f", "raw", "--output=json", "DIR/top.qcow2"],
    ["DIR/small"], ["--output=json", "DIR/small"],
    ["DIR/empty.qcow2"], ["--output=json", "-U", "DIR/empty.qcow2"],
    ["--start-offset=-1", "DIR/top.qcow2"], ["--max-length=x", "DIR/top.qcow2"],
    ["--output=xml", "DIR/top.qcow2"], ["DIR/nonexistent"], [], ["-Z"],
    ["--image-opts", "driver=qcow2,file.filename=DIR/top.qcow2"],
    ["--image-opts", "--output=json", "driver=raw,file.filename=DIR/base.raw"],
    ["--image-opts", "DIR/base.raw"], ["--image-opts", "-f", "raw", "DIR/base.raw"],
  ]

  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: runs)
  func mapMatches(_ arguments: [String]) async throws {
    let run = try await runImageCommand(["map"] + arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
  }
}
