import BlockTestSupport
import Foundation
import Testing

/// `qemu-img convert` against Spindle's: output (progress lines included),
/// errors and exit statuses must match; every image Spindle writes must have
/// the contents of qemu-img's (`qemu-img compare`) and of its source, and
/// qcow2 outputs must pass `qemu-img check`.
@Suite struct DifferentialConvertTests {
  /// A raw base with data, a zeroed range and holes; a qcow2 chain over it
  /// with data, zero and compressed clusters at several depths; and raw
  /// images full of data (an existing target for -n, a larger one).
  static func setup(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    func io(_ format: String, _ name: String, _ commands: [String]) async throws {
      let result = try await runProcess(
        "qemu-io", ["-f", format] + commands.flatMap { ["-c", $0] } + [path(name)])
      #expect(result.status == 0, "\(result)")
    }
    try await qemuImg(["create", "-q", "-f", "raw", path("base.raw"), "4M"])
    try await io(
      "raw", "base.raw",
      ["write -P 1 0 64k", "write -P 3 1M 4k", "write -z 2M 64k", "write -P 9 3M 100k"])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", path("mid.qcow2"),
    ])
    try await io(
      "qcow2", "mid.qcow2", ["write -P 2 64k 64k", "write -z 256k 64k", "write -P 4 1536k 64k"])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", path("top.qcow2"), "5M",
    ])
    try await io(
      "qcow2", "top.qcow2",
      ["write -P 5 0 4k", "write -z 1536k 64k", "write -P 6 2560k 64k", "write -c -P 7 4M 64k"])
    try await qemuImg(["create", "-q", "-f", "raw", path("exist.raw"), "5M"])
    try await io("raw", "exist.raw", ["write -P 8 0 5M"])
    try await qemuImg(["create", "-q", "-f", "raw", path("big.raw"), "7M"])
    try await io("raw", "big.raw", ["write -P 8 0 5M"])
    // Sources to concatenate: a size that is not a multiple of 512, and none.
    try await qemuImg(["create", "-q", "-f", "raw", path("odd.raw"), "1000"])
    try await io("raw", "odd.raw", ["write -P 8 0 1000"])
    try await qemuImg(["create", "-q", "-f", "raw", path("empty.raw"), "0"])
  }

  struct Run: Sendable, CustomTestStringConvertible {
    var arguments: [String]
    /// The image written (nil: the command fails before writing).
    var output: String? = "out"
    var format = "raw"
    /// The source, for comparing contents (nil: not compared).
    var source: String? = nil
    var sourceFormat: String? = nil

    var testDescription: String { arguments.joined(separator: " ") }
  }

  static let runs: [Run] = [
    Run(arguments: ["DIR/base.raw", "DIR/out"], source: "base.raw", sourceFormat: "raw"),
    Run(
      arguments: ["-O", "qcow2", "DIR/base.raw", "DIR/out"], format: "qcow2", source: "base.raw",
      sourceFormat: "raw"),
    Run(
      arguments: ["-O", "qcow2", "DIR/top.qcow2", "DIR/out"], format: "qcow2", source: "top.qcow2"),
    Run(arguments: ["-p", "DIR/top.qcow2", "DIR/out"], source: "top.qcow2"),
    Run(
      arguments: ["-p", "-c", "-O", "qcow2", "DIR/top.qcow2", "DIR/out"], format: "qcow2",
      source: "top.qcow2"),
    Run(
      arguments: ["-p", "-c", "-O", "qcow2", "DIR/big.raw", "DIR/out"], format: "qcow2",
      source: "big.raw", sourceFormat: "raw"),
    Run(
      arguments: ["-c", "-O", "qcow2", "-o", "cluster_size=4k", "-p", "DIR/base.raw", "DIR/out"],
      format: "qcow2", source: "base.raw", sourceFormat: "raw"),
    Run(arguments: ["-p", "-S", "0", "DIR/top.qcow2", "DIR/out"], source: "top.qcow2"),
    Run(
      arguments: ["-S", "0", "-O", "qcow2", "DIR/top.qcow2", "DIR/out"], format: "qcow2",
      source: "top.qcow2"),
    Run(
      arguments: ["-p", "-S", "64k", "-O", "qcow2", "DIR/top.qcow2", "DIR/out"], format: "qcow2",
      source: "top.qcow2"),
    Run(
      arguments: ["-O", "qcow2", "-o", "compat=0.10,cluster_size=512", "DIR/top.qcow2", "DIR/out"],
      format: "qcow2", source: "top.qcow2"),
    Run(
      arguments: ["-p", "-O", "qcow2", "DIR/big.raw", "DIR/out"], format: "qcow2",
      source: "big.raw", sourceFormat: "raw"),
    Run(
      arguments: [
        "-q", "-p", "-t", "none", "-T", "none", "-m", "4", "-W", "-U", "DIR/top.qcow2", "DIR/out",
      ], source: "top.qcow2"),
    Run(
      arguments: ["-W", "-m", "16", "-O", "qcow2", "DIR/top.qcow2", "DIR/out"], format: "qcow2",
      source: "top.qcow2"),
    Run(arguments: ["-m", "1", "DIR/top.qcow2", "DIR/out"], source: "top.qcow2"),
    // Several sources, concatenated.
    Run(arguments: ["-p", "DIR/base.raw", "DIR/top.qcow2", "DIR/out"]),
    Run(
      arguments: ["-p", "-O", "qcow2", "DIR/top.qcow2", "DIR/odd.raw", "DIR/base.raw", "DIR/out"],
      format: "qcow2"),
    Run(
      arguments: [
        "-p", "-c", "-O", "qcow2", "DIR/odd.raw", "DIR/top.qcow2", "DIR/empty.raw", "DIR/odd.raw",
        "DIR/out",
      ], format: "qcow2"),
    Run(arguments: ["-n", "DIR/base.raw", "DIR/odd.raw", "DIR/exist.raw"], output: "exist.raw"),
    Run(arguments: ["DIR/base.raw", "DIR/nonexistent", "DIR/out"], output: nil),
    Run(
      arguments: [
        "--image-opts", "driver=raw,file.filename=DIR/base.raw",
        "driver=qcow2,file.filename=DIR/top.qcow2", "DIR/out",
      ]),
    Run(arguments: ["--image-opts", "DIR/base.raw", "DIR/out"], output: nil),
    // With -p, a failure still ends the progress line.
    Run(arguments: ["-p", "DIR/nonexistent", "DIR/out"], output: nil),
    Run(
      arguments: ["-p", "-O", "qcow2", "-o", "cluster_size=3k", "DIR/base.raw", "DIR/out"],
      output: nil),
    Run(arguments: ["-p", "-t", "bogus", "DIR/base.raw", "DIR/out"]),
    Run(
      arguments: ["-O", "qcow2", "-o", "backing_file=x", "DIR/base.raw", "DIR/out"], output: nil),
    // Into existing images: everything is written, unless the target is said to be zero.
    Run(arguments: ["-n", "DIR/top.qcow2", "DIR/exist.raw"], output: "exist.raw"),
    Run(
      arguments: ["-n", "--target-is-zero", "-O", "raw", "DIR/top.qcow2", "DIR/exist.raw"],
      output: "exist.raw"),
    Run(arguments: ["-n", "DIR/base.raw", "DIR/big.raw"], output: "big.raw"),
    Run(arguments: ["-n", "DIR/big.raw", "DIR/base.raw"], output: "base.raw"),
    // Errors.
    Run(arguments: [], output: nil), Run(arguments: ["DIR/top.qcow2"], output: nil),
    Run(arguments: ["-O", "raw", "DIR/nonexistent", "DIR/out"], output: nil),
    Run(arguments: ["-c", "-O", "raw", "DIR/top.qcow2", "DIR/out"], output: nil),
    Run(arguments: ["-O", "bogus", "DIR/top.qcow2", "DIR/out"], output: nil),
    Run(arguments: ["--target-is-zero", "DIR/top.qcow2", "DIR/out"], output: nil),
    Run(arguments: ["-n", "-O", "qcow2", "DIR/top.qcow2", "DIR/out"], output: nil),
    Run(arguments: ["-S", "x", "DIR/top.qcow2", "DIR/out"], output: nil),
    Run(arguments: ["-S", "1000", "DIR/top.qcow2", "DIR/out"], output: nil),
    Run(arguments: ["-t", "bogus", "DIR/top.qcow2", "DIR/out"]),
    Run(arguments: ["-T", "bogus", "DIR/top.qcow2", "DIR/out"], output: nil),
    Run(
      arguments: ["-o", "cluster_size=3k", "-O", "qcow2", "DIR/top.qcow2", "DIR/out"], output: nil),
    Run(arguments: ["-o", "help", "-O", "qcow2", "DIR/top.qcow2", "DIR/out"], output: nil),
    Run(arguments: ["-o", "help", "-O", "raw"], output: nil),
    Run(arguments: ["-o", "bogus=1", "-O", "qcow2", "DIR/top.qcow2", "DIR/out"], output: nil),
    Run(arguments: ["-m", "0", "DIR/top.qcow2", "DIR/out"], output: nil),
    Run(arguments: ["-m", "17", "DIR/top.qcow2", "DIR/out"], output: nil),
    Run(arguments: ["-Z", "DIR/top.qcow2", "DIR/out"], output: nil),
    Run(arguments: ["-f", "qcow2", "DIR/base.raw", "DIR/out"], output: nil),
    // The source is locked: converting onto it fails before anything is written.
    Run(arguments: ["DIR/base.raw", "DIR/base.raw"], output: nil),
    Run(arguments: ["-O", "qcow2", "DIR/top.qcow2", "DIR/top.qcow2"], output: nil),
    Run(arguments: ["-O", "raw", "DIR/top.qcow2", "DIR/mid.qcow2"], output: nil),
    Run(arguments: ["-n", "-f", "raw", "-O", "raw", "DIR/base.raw", "DIR/base.raw"], output: nil),
  ]

  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: runs)
  func convertMatches(_ run: Run) async throws {
    let result = try await runImageCommand(["convert"] + run.arguments, setup: Self.setup)
    #expect(result.spindle == result.qemu, "\(result)")
    #expect(try result.spindleFileNames() == result.fileNames())
    // Sources (and targets a failed command must not touch) stay as they were.
    for name in try result.fileNames() where name != run.output {
      #expect(result.sameBytes(name), "\(name) differs")
    }
    guard let output = run.output else { return }
    let compared = try await result.compareContents(output, format: run.format)
    #expect(compared.status == 0, "\(compared)")
    #expect(compared.output == "Images are identical.\n")
    if run.format == "qcow2" {
      let check = try await result.checkSpindleImage(output)
      #expect(check.status == 0, "\(check)")
    }
    if let source = run.source {
      var arguments = ["compare", "-F", run.format]
      if let format = run.sourceFormat { arguments += ["-f", format] }
      arguments += ["\(result.spindleDirectory)/\(source)", "\(result.spindleDirectory)/\(output)"]
      let againstSource = try await runProcess("qemu-img", arguments)
      #expect(againstSource.status == 0, "\(againstSource)")
    }
  }

  /// Writes go in image order whatever the number in flight, so a raw source
  /// with several 2 MiB chunks becomes the very qcow2 file qemu-img writes.
  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: [["-m", "1"], ["-m", "8"], ["-m", "16"]])
  func orderedWritesGiveQEMUsLayout(_ inFlight: [String]) async throws {
    let run = try await runImageCommand(
      ["convert", "-O", "qcow2"] + inFlight + ["DIR/big.raw", "DIR/out"], setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
    #expect(run.sameBytes("out"))
  }
}
