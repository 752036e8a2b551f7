import BlockTestSupport
import Foundation
import Testing

/// `qemu-img measure` against Spindle's: the sizes (human and JSON) for raw
/// and qcow2 targets with several creation options, from sources with data,
/// zeroes, compressed clusters, backing files and bitmaps, and the errors.
@Suite struct DifferentialMeasureTests {
  /// The images, built once.
  static let template = Task { try await ImageTemplate.build(build) }

  static func setup(_ directory: String) async throws {
    try await template.value.link(into: directory)
  }

  @Sendable static func build(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    func io(_ format: String, _ name: String, _ commands: [String]) async throws {
      let result = try await runProcess(
        "qemu-io", ["-f", format] + commands.flatMap { ["-c", $0] } + [path(name)])
      #expect(result.status == 0, "\(result)")
    }
    try await qemuImg(["create", "-q", "-f", "qcow2", path("q.qcow2"), "300M"])
    try await io(
      "qcow2", "q.qcow2",
      ["write -P 1 0 1M", "write -P 2 100M 64k", "write -z 200M 1M", "write -P 3 250001k 3k"])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-b", "q.qcow2", "-F", "qcow2", path("top.qcow2"),
    ])
    try await io("qcow2", "top.qcow2", ["write -P 4 150M 128k", "write -z 0 64k"])
    try await qemuImg(["create", "-q", "-f", "raw", path("r.raw"), "10M"])
    try await io("raw", "r.raw", ["write -P 5 1000 100k", "write -P 6 5M 4k"])
    try await qemuImg(["convert", "-c", "-O", "qcow2", path("r.raw"), path("c.qcow2")])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-o", "compat=0.10,cluster_size=4k", path("v2.qcow2"), "9M",
    ])
    try await io("qcow2", "v2.qcow2", ["write -P 7 1M 3M"])
    try await qemuImg(["create", "-q", "-f", "qcow2", path("bm.qcow2"), "100M"])
    try await io("qcow2", "bm.qcow2", ["write -P 8 0 64k"])
    try await qemuImg(["bitmap", "--add", path("bm.qcow2"), "b0"])
    try await qemuImg(["bitmap", "--add", "-g", "512", path("bm.qcow2"), "a-longer-bitmap-name"])
  }

  static let targets: [[String]] = [
    [], ["-O", "qcow2"], ["-O", "qcow2", "-o", "cluster_size=4k"],
    ["-O", "qcow2", "-o", "cluster_size=2M,refcount_bits=64"],
    ["-O", "qcow2", "-o", "refcount_bits=1,cluster_size=512"],
    ["-O", "qcow2", "-o", "compat=0.10"], ["-O", "qcow2", "-o", "extended_l2=on"],
    ["-O", "qcow2", "-o", "preallocation=full"], ["-O", "qcow2", "-o", "backing_file=x"],
    ["-O", "qcow2", "--output=json"], ["--output=json", "-O", "raw"],
  ]
  static let sources: [[String]] = [
    ["DIR/q.qcow2"], ["DIR/top.qcow2"], ["DIR/r.raw"], ["DIR/c.qcow2"], ["DIR/v2.qcow2"],
    ["DIR/bm.qcow2"], ["--size", "1234567"], ["--size", "0"],
  ]
  static let errors: [[String]] = [
    [], ["DIR/q.qcow2", "DIR/r.raw"], ["-f", "raw"], ["--image-opts"], ["-l", "s"],
    ["--size", "1G", "DIR/q.qcow2"], ["--size", "x"], ["--size", "-1"],
    ["--output=xml", "--size", "1"],
    ["-O", "bogus", "--size", "1"], ["-O", "vmdk", "--size", "1"],
    ["-O", "blkdebug", "--size", "1"],
    ["-O", "raw", "-o", "cluster_size=4k", "--size", "1"],
    ["-O", "qcow2", "-o", "cluster_size=3k", "--size", "1"],
    ["-O", "qcow2", "-o", "cluster_size=x", "--size", "1"],
    ["-O", "qcow2", "-o", "extended_l2=on,cluster_size=8k", "--size", "1"],
    ["-O", "qcow2", "-o", "compat=v3", "--size", "1"],
    ["-O", "qcow2", "-o", "compat=0.10,refcount_bits=8", "--size", "1"],
    ["-O", "qcow2", "-o", "refcount_bits=128", "--size", "1"],
    ["-O", "qcow2", "-o", "preallocation=bogus", "--size", "1"],
    ["-O", "qcow2", "-o", "bogus=1", "--size", "1"], ["-O", "qcow2", "--size", "1000P"],
    ["-O", "qcow2", "--size", "8E"], ["-O", "qcow2", "-o", "cluster_size=512", "--size", "100T"],
    ["-O", "qcow2", "DIR/missing"], ["-f", "qcow2", "DIR/r.raw"],
    ["-O", "qcow2", "--image-opts", "driver=qcow2,file.filename=DIR/top.qcow2"],
    ["-U", "-O", "qcow2", "DIR/q.qcow2"], ["-O", "qcow2", "-o", "size=5G", "--size", "1G"],
    ["-O", "qcow2", "-o", "size=5G", "DIR/r.raw"],
    ["-O", "qcow2", "-o", "size=1000P", "DIR/r.raw"],
    ["-O", "raw", "-o", "size=1000P", "DIR/r.raw"],
  ]

  static let runs: [[String]] =
    targets.flatMap { target in sources.map { target + $0 } } + errors

  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: runs)
  func measureMatches(_ arguments: [String]) async throws {
    let run = try await runImageCommand(["measure"] + arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
  }

  /// A bad option prints getopt's message and the help, and succeeds.
  @Test(.requires("qemu-img"))
  func badOptionShowsHelp() async throws {
    let run = try await runImageCommand(["measure", "-Z"])
    #expect(run.spindle.status == run.qemu.status)
    #expect(run.spindle.error == run.qemu.error)
    #expect(run.spindle.output.contains("measure [--output=ofmt]"))
  }
}
