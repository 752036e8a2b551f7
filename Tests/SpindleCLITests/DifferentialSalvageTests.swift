import BlockTestSupport
import Foundation
import Testing

/// `qemu-img convert` with read errors injected by blkdebug, with and without
/// `--salvage`, against Spindle's: output, warnings and errors, exit status
/// and the image written (salvaged sectors read as zeroes) must match.
@Suite(.requires("qemu-img", "qemu-io"))
struct DifferentialSalvageTests {
  /// A raw image of 3 MiB of data (two 2 MiB copy chunks), its qcow2 copy,
  /// one of 3,000,000 bytes, a 64 KiB qcow2 of data, and a blkdebug configuration file failing reads of sector 100.
  static func setup(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    try await qemuImg(["create", "-q", "-f", "raw", path("base.raw"), "3M"])
    let written = try await runProcess(
      "qemu-io",
      ["-f", "raw", "-c", "write -P 1 0 1M", "-c", "write -P 2 1M 1M", "-c", "write -P 3 2M 1M"]
        + [path("base.raw")])
    #expect(written.status == 0, "\(written)")
    try await qemuImg(["convert", "-f", "raw", "-O", "qcow2", path("base.raw"), path("base.qcow2")])
    try await qemuImg(["create", "-q", "-f", "qcow2", path("small.qcow2"), "64k"])
    let small = try await runProcess(
      "qemu-io", ["-f", "qcow2", "-c", "write -P 7 0 64k", path("small.qcow2")])
    #expect(small.status == 0, "\(small)")
    // A size that is not a whole number of sectors.
    try Data(repeating: 0x5a, count: 3_000_000).write(to: URL(fileURLWithPath: path("odd.raw")))
    let config = "[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\nsector = \"100\"\n"
    try config.write(toFile: path("blkdebug.conf"), atomically: true, encoding: .utf8)
  }

  /// A `json:` source: `format` over blkdebug over the file `image`, failing
  /// reads of each `(sector, errno)`, once if `once`.
  static func source(
    _ image: String, format: String = "raw", errors: [(Int, Int)], once: Bool = false
  ) -> String {
    let rules = errors.map {
      #"{"event":"read_aio","sector":\#($0.0),"errno":\#($0.1),"once":\#(once)}"#
    }
    return #"json:{"driver":"\#(format)","file":{"driver":"blkdebug","inject-error":["#
      + rules.joined(separator: ",")
      + #"],"image":{"driver":"file","filename":"DIR/\#(image)"}}}"#
  }

  /// A qcow2 `image` whose L2 table loads fail: its block status fails.
  static func failingMetadata(_ image: String) -> String {
    #"json:{"driver":"qcow2","file":{"driver":"blkdebug","inject-error":"#
      + #"[{"event":"l2_load","errno":5}],"image":{"driver":"file","filename":"DIR/\#(image)"}}}"#
  }

  struct Run: Sendable, CustomTestStringConvertible {
    var name: String
    var arguments: [String]
    var format = "raw"
    /// Whether the images written must match (not when the command fails
    /// while runs are in flight: QEMU's coroutines and Spindle's tasks may
    /// get different parts written before the failure).
    var compareImage = true

    var testDescription: String { name }
  }

  static let runs: [Run] = [
    Run(
      name: "a read error fails the convert",
      arguments: [source("base.raw", errors: [(100, 5)]), "DIR/out"]),
    Run(
      name: "salvage: one bad sector",
      arguments: ["--salvage", source("base.raw", errors: [(100, 5)]), "DIR/out"]),
    Run(
      name: "salvage: bad sectors in two chunks, other errnos",
      arguments: [
        "--salvage", "-m", "1", source("base.raw", errors: [(1, 5), (4097, 28), (5000, 1)]),
        "DIR/out",
      ]),
    Run(
      name: "salvage: -q silences the warnings",
      arguments: ["--salvage", "-q", source("base.raw", errors: [(100, 5)]), "DIR/out"]),
    Run(
      name: "salvage: an error that happens once is recovered",
      arguments: ["--salvage", source("base.raw", errors: [(100, 5)], once: true), "DIR/out"]),
    Run(
      name: "salvage into qcow2 with progress",
      arguments: [
        "--salvage", "-p", "-O", "qcow2", source("base.raw", errors: [(7, 5)]), "DIR/out",
      ],
      format: "qcow2"),
    Run(
      name: "salvage: a qcow2 source over blkdebug",
      arguments: [
        "--salvage", source("base.qcow2", format: "qcow2", errors: [(2000, 5)]), "DIR/out",
      ]),
    Run(
      name: "salvage: offsets are the failing source's",
      arguments: [
        "--salvage", "-m", "1", "-f", "raw", "DIR/base.raw",
        source("base.raw", errors: [(100, 5)]), "DIR/out",
      ]),
    Run(
      name: "salvage: blkdebug configuration file",
      arguments: ["--salvage", "-f", "raw", "blkdebug:DIR/blkdebug.conf:DIR/base.raw", "DIR/out"]),
    Run(
      name: "configuration file without salvage",
      arguments: ["-f", "raw", "blkdebug:DIR/blkdebug.conf:DIR/base.raw", "DIR/out"]),
    Run(
      name: "salvage: the partial last sector, runs in flight",
      arguments: ["--salvage", source("odd.raw", errors: [(5000, 5), (5859, 28)]), "DIR/out"]),
    Run(
      name: "salvage: compressed target",
      arguments: [
        "--salvage", "-c", "-O", "qcow2", source("odd.raw", errors: [(5000, 5), (5859, 28)]),
        "DIR/out",
      ],
      format: "qcow2"),
    Run(
      name: "failing block status",
      arguments: [failingMetadata("small.qcow2"), "DIR/out"]),
    Run(
      name: "failing block status of the second source",
      arguments: ["DIR/small.qcow2", failingMetadata("small.qcow2"), "DIR/out"],
      compareImage: false),
    Run(
      name: "salvage: failing block status, sector by sector",
      arguments: ["--salvage", "-m", "1", failingMetadata("small.qcow2"), "DIR/out"]),
    Run(
      name: "salvage: failing block status, quietly",
      arguments: ["--salvage", "-q", failingMetadata("small.qcow2"), "DIR/out"]),
    Run(
      name: "salvage conflicts with -C",
      arguments: ["--salvage", "-C", "DIR/base.raw", "DIR/out"]),
  ]

  @Test(arguments: runs)
  func convertMatches(_ run: Run) async throws {
    let result = try await runImageCommand(["convert"] + run.arguments, setup: Self.setup)
    #expect(result.spindle == result.qemu, "\(result)")
    let names = try result.fileNames()
    #expect(try result.spindleFileNames() == names)
    for name in names where name != "out" {
      #expect(result.sameBytes(name), "\(name) differs")
    }
    guard names.contains("out"), run.compareImage else { return }
    let compared = try await result.compareContents("out", format: run.format)
    #expect(compared.status == 0, "\(compared)")
    if run.format == "raw" { #expect(result.sameBytes("out")) }
    if run.format == "qcow2" {
      let check = try await result.checkSpindleImage("out")
      #expect(check.status == 0, "\(check)")
    }
  }
}
