import BlockTestSupport
import Foundation
import Testing

/// Images named by `--image-opts` option strings and by `json:` file names,
/// across the qemu-img commands, against qemu-img: output, errors, exit
/// statuses and the images afterwards.
@Suite struct DifferentialImageOptsTests {
  /// The images, built once.
  static let template = Task { try await ImageTemplate.build(build) }

  static func setup(_ directory: String) async throws {
    try await template.value.copy(into: directory)
  }

  @Sendable static func build(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    try await qemuImg(["create", "-q", "-f", "qcow2", path("base.qcow2"), "1M"])
    let written = try await runProcess(
      "qemu-io", ["-c", "write -P 1 0 64k", path("base.qcow2")])
    #expect(written.status == 0, "\(written)")
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", path("top.qcow2"),
    ])
    let top = try await runProcess("qemu-io", ["-c", "write -P 2 32k 64k", path("top.qcow2")])
    #expect(top.status == 0, "\(top)")
    try await qemuImg(["create", "-q", "-f", "raw", path("r.raw"), "1M"])
  }

  static let top = "driver=qcow2,file.filename=DIR/top.qcow2"
  static let topJSON =
    #"json:{"driver":"qcow2","file":{"driver":"file","filename":"DIR/top.qcow2"}}"#

  static let runs: [[String]] = [
    ["info", "--image-opts", top], ["info", "--backing-chain", "--image-opts", top],
    ["info", "--output=json", "--image-opts", top], ["info", "--image-opts", "DIR/top.qcow2"],
    ["info", "-f", "qcow2", "--image-opts", top],
    ["info", "--image-opts", "file.filename=DIR/r.raw"],
    ["info", topJSON], ["info", "--backing-chain", topJSON], ["map", topJSON],
    ["map", "--image-opts", top], ["compare", topJSON, "DIR/top.qcow2"],
    ["measure", "-O", "qcow2", topJSON], ["measure", "-O", "qcow2", "--image-opts", top],
    ["commit", "-d", topJSON], ["commit", "--image-opts", top],
    ["rebase", "-u", "-b", "", "--image-opts", top], ["rebase", "-b", "", topJSON],
    ["dd", "--image-opts", "if=\(top)", "of=DIR/o.raw"], ["dd", "if=\(topJSON)", "of=DIR/o.raw"],
    ["convert", "-O", "raw", topJSON, "DIR/o.raw"],
    ["resize", "--image-opts", top, "2M"], ["resize", topJSON, "2M"],
  ]

  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: runs)
  func imageOptionsMatch(_ arguments: [String]) async throws {
    let run = try await runImageCommand(arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
    #expect(try run.spindleFileNames() == run.fileNames())
    try await expectSameImages(run)
  }
}
