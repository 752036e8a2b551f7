import BlockTestSupport
import Foundation
import Testing

/// `qemu-img commit` as QEMU 7.2's active commit job makes it, against
/// Spindle's: zero clusters above the base become zero-writes that unmap
/// the base's clusters where they are whole clusters; a base that is not a
/// format over a plain file (qcow2 over blkdebug) is written too; the
/// committed image is emptied as QEMU's `qcow2_make_empty` does (rebuilt
/// from scratch for a v3 image, every cluster discarded for a v2 one). The
/// output, every image's map and check, and the emptied image's bytes where
/// its header names the same files.
@Suite(.requires("qemu-img", "qemu-io"))
struct DifferentialCommitParityTests {
  static func setup(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    func io(_ name: String, _ commands: [String]) async throws {
      let result = try await runProcess(
        "qemu-io", commands.flatMap { ["-c", $0] } + [path(name)])
      #expect(result.status == 0, "\(result)")
    }
    let zeroes = [
      "write -P 2 0 64k", "write -z 128k 128k", "write -z 300k 10k", "write -z -u 512k 64k",
      "write -z 700k 64k",
    ]
    for (base, top, options) in [
      ("base.qcow2", "top.qcow2", [String]()), ("b2.qcow2", "v2.qcow2", ["-o", "compat=0.10"]),
    ] {
      try await qemuImg(["create", "-q", "-f", "qcow2", path(base), "1M"])
      try await io(base, ["write -P 1 0 1M"])
      try await qemuImg(
        ["create", "-q", "-f", "qcow2"] + options + ["-b", base, "-F", "qcow2", path(top)])
      try await io(top, zeroes)
    }
    try await qemuImg(["create", "-q", "-f", "qcow2", path("dbase.qcow2"), "1M"])
    try await io("dbase.qcow2", ["write -P 1 0 1M"])
    let overBlkdebug =
      #"json:{"driver":"qcow2","file":{"driver":"blkdebug","image":{"driver":"file","filename":"\#(path("dbase.qcow2"))"}}}"#
    try await qemuImg(
      ["create", "-q", "-f", "qcow2", "-b", overBlkdebug, "-F", "qcow2", path("dtop.qcow2")])
    try await io("dtop.qcow2", zeroes)
  }

  static let runs: [(arguments: [String], images: [String])] = [
    (["DIR/top.qcow2"], ["base.qcow2", "top.qcow2"]),
    (["-d", "DIR/top.qcow2"], ["base.qcow2", "top.qcow2"]),
    (["DIR/v2.qcow2"], ["b2.qcow2", "v2.qcow2"]),
    (["DIR/dtop.qcow2"], ["dbase.qcow2", "dtop.qcow2"]),
  ]

  @Test(arguments: runs)
  func commitMatches(_ arguments: [String], images: [String]) async throws {
    let run = try await runImageCommand(["commit"] + arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
    for image in images {
      for command in [["map", "--output=json"], ["check"]] {
        let qemu = try await runProcess(
          "qemu-img", command + ["-f", "qcow2", "\(run.qemuDirectory)/\(image)"])
        let spindle = try await runProcess(
          "qemu-img", command + ["-f", "qcow2", "\(run.spindleDirectory)/\(image)"])
        #expect(spindle.output == qemu.output, "\(image) \(command[0])")
        #expect(spindle.status == qemu.status, "\(image) \(command[0])")
      }
      if image != "dtop.qcow2" {
        // dtop's header names its base by an absolute path.
        #expect(run.sameBytes(image), "\(image) differs")
      }
    }
  }
}
