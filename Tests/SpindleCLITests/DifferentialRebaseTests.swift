import BlockTestSupport
import Foundation
import Testing

/// `qemu-img rebase` against Spindle's, safe and unsafe: output, errors and
/// exit statuses, the images' contents (through their chains and alone) and
/// the backing file each one names afterwards.
@Suite struct DifferentialRebaseTests {
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
    func create(_ name: String, _ options: [String], size: String? = "1M") async throws {
      try await qemuImg(
        ["create", "-q", "-f", "qcow2"] + options + [path(name)] + (size.map { [$0] } ?? []))
    }
    try await create("base.qcow2", [])
    try await io("qcow2", "base.qcow2", ["write -P 1 0 256k", "write -P 4 768k 64k"])
    try await create("nb.qcow2", ["-o", "cluster_size=4k"])
    try await io("qcow2", "nb.qcow2", ["write -P 1 0 128k", "write -P 8 512k 65k"])
    try await create("short.qcow2", [], size: "512k")
    try await io("qcow2", "short.qcow2", ["write -P 1 0 64k", "write -P 9 300k 1k"])
    try await create("top.qcow2", ["-b", "base.qcow2", "-F", "qcow2"], size: nil)
    try await io("qcow2", "top.qcow2", ["write -P 3 100k 10k", "write -z 896k 64k"])
    try await create("mid.qcow2", ["-b", "base.qcow2", "-F", "qcow2"], size: nil)
    try await io("qcow2", "mid.qcow2", ["write -P 2 64k 64k"])
    try await create("top2.qcow2", ["-b", "mid.qcow2", "-F", "qcow2"], size: nil)
    try await io("qcow2", "top2.qcow2", ["write -P 5 120k 4k"])
    try await qemuImg(["create", "-q", "-f", "raw", path("r.raw"), "1M"])
    try await io("raw", "r.raw", ["write -P 6 0 1M"])
    try await create("top3.qcow2", ["-b", "short.qcow2", "-F", "qcow2"], size: "2M")
    try await io("qcow2", "top3.qcow2", ["write -P 3 1M 4k"])
    try await create("c512.qcow2", ["-o", "cluster_size=512"])
    try await create("alone.qcow2", [])
    try await io("qcow2", "alone.qcow2", ["write -P 7 0 64k"])
    try await create(
      "v2.qcow2", ["-o", "compat=0.10", "-b", "base.qcow2", "-F", "qcow2"], size: nil)
    try await io("qcow2", "v2.qcow2", ["write -P 3 600k 4k"])
  }

  static let runs: [[String]] = [
    ["-b", "nb.qcow2", "-F", "qcow2", "DIR/top.qcow2"],
    ["-b", "DIR/nb.qcow2", "-F", "qcow2", "DIR/top.qcow2"], ["-b", "", "DIR/top.qcow2"],
    ["-u", "-b", "nb.qcow2", "-F", "qcow2", "DIR/top.qcow2"], ["-u", "DIR/top.qcow2"],
    ["-u", "-b", "", "-F", "raw", "DIR/top.qcow2"],
    ["-b", "short.qcow2", "-F", "qcow2", "DIR/top.qcow2"],
    ["-b", "base.qcow2", "-F", "qcow2", "DIR/top2.qcow2"],
    ["-b", "DIR/base.qcow2", "-F", "qcow2", "DIR/top2.qcow2"],
    ["-b", "r.raw", "-F", "raw", "DIR/top.qcow2"],
    ["-b", "nb.qcow2", "-F", "qcow2", "DIR/top3.qcow2"], ["-b", "", "DIR/top3.qcow2"],
    ["-b", "nb.qcow2", "-F", "qcow2", "DIR/alone.qcow2"],
    ["-b", "nb.qcow2", "DIR/top.qcow2"], ["-u", "-b", "nb.qcow2", "DIR/top.qcow2"],
    ["-b", "missing", "DIR/top.qcow2"], ["-u", "-b", "missing", "-F", "qcow2", "DIR/top.qcow2"],
    ["-b", "nb.qcow2", "-F", "bogus", "DIR/top.qcow2"],
    ["-b", "nb.qcow2", "-F", "qcow2", "-f", "raw", "DIR/r.raw"],
    ["-u", "-b", String(repeating: "x", count: 1100), "-F", "raw", "DIR/top.qcow2"],
    ["-u", "-b", String(repeating: "y", count: 300), "-F", "qcow2", "DIR/c512.qcow2"],
    ["-u", "-b", String(repeating: "y", count: 1000), "-F", "qcow2", "DIR/c512.qcow2"],
    ["-p", "-b", "nb.qcow2", "-F", "qcow2", "DIR/top.qcow2"],
    ["-q", "-p", "-b", "", "DIR/v2.qcow2"], ["-b", "nb.qcow2", "-F", "qcow2", "DIR/v2.qcow2"],
    ["-U", "-t", "none", "-T", "none", "-b", "nb.qcow2", "-F", "qcow2", "DIR/top.qcow2"],
    [
      "--image-opts", "-b", "nb.qcow2", "-F", "qcow2", "driver=qcow2,file.filename=DIR/top.qcow2",
    ],
    ["-b", "nb.qcow2", "DIR/missing"], ["-t", "bogus", "-b", "x", "DIR/top.qcow2"],
    ["-T", "bogus", "-b", "x", "DIR/top.qcow2"], [], ["DIR/top.qcow2"], ["-Z", "DIR/top.qcow2"],
    ["DIR/a", "DIR/b"],
  ]

  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: runs)
  func rebaseMatches(_ arguments: [String]) async throws {
    let run = try await runImageCommand(["rebase"] + arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
    try await expectSameImages(run)
    for name in try run.fileNames() where name.hasSuffix(".qcow2") && !run.sameBytes(name) {
      func backing(_ directory: String) async throws -> String {
        let info = try await runProcess("qemu-img", ["info", "-U", "\(directory)/\(name)"])
        return info.output.split(separator: "\n").filter { $0.hasPrefix("backing file") }
          .joined(separator: "\n").replacingOccurrences(of: directory, with: "DIR")
      }
      let expected = try await backing(run.qemuDirectory)
      let actual = try await backing(run.spindleDirectory)
      #expect(actual == expected, "\(name)")
    }
  }
}
