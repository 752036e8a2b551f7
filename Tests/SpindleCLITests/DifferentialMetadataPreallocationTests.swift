import BlockTestSupport
import Foundation
import Testing

/// Block status asks the image file whether qcow2 data clusters are holes
/// only when the image looks metadata-preallocated (QEMU 7.2's RECURSE from
/// `qcow2_detect_metadata_preallocation`): a small image whose zero-filled
/// data cluster was sparsified reads as zero data; a large one with as many
/// data clusters as its file occupies does not. Checked through every
/// command that reads block status: map, measure, convert, compare.
@Suite(.requires("qemu-img", "qemu-io"))
struct DifferentialMetadataPreallocationTests {
  /// `small.qcow2` (1 MiB, one cluster of written zeroes) and `big.qcow2`
  /// (64 MiB, 32 MiB of data whose first cluster is zeroes), each copied
  /// sparse (`cp --sparse=always`) to `small-sparse.qcow2` and
  /// `big-sparse.qcow2`; `prealloc.qcow2` made with preallocation=metadata.
  static func setup(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    try await qemuImg(["create", "-q", "-f", "qcow2", path("small.qcow2"), "1M"])
    try await qemuImg(["create", "-q", "-f", "qcow2", path("big.qcow2"), "64M"])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", path("prealloc.qcow2"), "4M",
    ])
    for (name, commands) in [
      ("small", ["write -P 0 0 64k"]), ("big", ["write -P 1 0 32M", "write -P 0 0 64k"]),
    ] {
      let written = try await runProcess(
        "qemu-io", commands.flatMap { ["-c", $0] } + [path("\(name).qcow2")])
      #expect(written.status == 0, "\(written)")
      let copied = try await runProcess(
        "cp", ["--sparse=always", path("\(name).qcow2"), path("\(name)-sparse.qcow2")])
      #expect(copied.status == 0, "\(copied)")
    }
  }

  static let runs: [[String]] = [
    ["map", "--output=json", "DIR/small-sparse.qcow2"], ["map", "DIR/small-sparse.qcow2"],
    ["map", "--output=json", "DIR/small.qcow2"], ["map", "--output=json", "DIR/big-sparse.qcow2"],
    ["map", "--output=json", "DIR/prealloc.qcow2"],
    ["measure", "-O", "qcow2", "DIR/small-sparse.qcow2"],
    ["measure", "-O", "qcow2", "DIR/big-sparse.qcow2"],
    ["measure", "-O", "qcow2", "DIR/prealloc.qcow2"],
    ["convert", "-O", "qcow2", "DIR/small-sparse.qcow2", "DIR/out.qcow2"],
    ["convert", "-O", "qcow2", "DIR/prealloc.qcow2", "DIR/out.qcow2"],
    ["convert", "-O", "qcow2", "DIR/big-sparse.qcow2", "DIR/out.qcow2"],
    ["compare", "DIR/small-sparse.qcow2", "DIR/small.qcow2"],
    ["compare", "-s", "DIR/small-sparse.qcow2", "DIR/prealloc.qcow2"],
  ]

  @Test(arguments: runs)
  func sameAnswer(_ arguments: [String]) async throws {
    let run = try await runImageCommand(arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
    if arguments[0] == "convert" {
      #expect(run.sameBytes("out.qcow2"), "out.qcow2 differs")
    }
  }
}
