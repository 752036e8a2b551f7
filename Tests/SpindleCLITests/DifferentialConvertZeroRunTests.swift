import BlockTestSupport
import Foundation
import Testing

/// How `qemu-img convert` writes the runs that read as zeroes, against
/// Spindle's, compared by `qemu-img map --output=json` of the images written
/// (and their messages): `-S 0` writes them as data, `-B` leaves the runs
/// past the end of the target's backing file unallocated, and `--salvage`
/// narrows a failing block-status query down to the failing sectors.
@Suite(.requires("qemu-img", "qemu-io"))
struct DifferentialConvertZeroRunTests {
  /// The images, built once.
  static let template = Task { try await ImageTemplate.build(build) }

  static func setup(_ directory: String) async throws {
    try await template.value.copy(into: directory)
  }

  /// `base.qcow2`: 1 MiB of data. `top.qcow2`: 3 MiB over it (its backing
  /// file ends at 1 MiB), with data, zero clusters before and after the
  /// backing file's end, and unallocated ranges. `data.raw`: 1 MiB of data.
  @Sendable static func build(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    try await qemuImg(["create", "-q", "-f", "qcow2", path("base.qcow2"), "1M"])
    let base = try await runProcess("qemu-io", ["-c", "write -P 1 0 1M", path("base.qcow2")])
    #expect(base.status == 0, "\(base)")
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", path("top.qcow2"), "3M",
    ])
    let commands = [
      "write -P 2 0 64k", "write -z 512k 128k", "write -z 1536k 128k", "write -P 3 2M 64k",
      "write -z 2560k 64k",
    ]
    let top = try await runProcess(
      "qemu-io", commands.flatMap { ["-c", $0] } + [path("top.qcow2")])
    #expect(top.status == 0, "\(top)")
    try await qemuImg(["create", "-q", "-f", "raw", path("data.raw"), "1M"])
    let data = try await runProcess(
      "qemu-io", ["-f", "raw", "-c", "write -P 5 0 1M", path("data.raw")])
    #expect(data.status == 0, "\(data)")
  }

  /// A raw `json:` source over blkdebug whose block-status queries fail
  /// when they cover one of `sectors`.
  static func failingStatus(_ image: String, sectors: [Int]) -> String {
    let rules = sectors.map {
      #"{"event":"none","iotype":"block-status","sector":\#($0),"errno":5}"#
    }
    return #"json:{"driver":"raw","file":{"driver":"blkdebug","inject-error":["#
      + rules.joined(separator: ",")
      + #"],"image":{"driver":"file","filename":"DIR/\#(image)"}}}"#
  }

  struct Run: Sendable, CustomTestStringConvertible {
    var arguments: [String]
    /// The image written, mapped in both directories.
    var output: String
    var format: String

    var testDescription: String { arguments.joined(separator: " ") }
  }

  static let runs: [Run] = [
    Run(
      arguments: ["-S", "0", "-O", "qcow2", "DIR/top.qcow2", "DIR/o"], output: "o", format: "qcow2"),
    Run(arguments: ["-S", "0", "-O", "raw", "DIR/top.qcow2", "DIR/o"], output: "o", format: "raw"),
    Run(
      arguments: ["-S", "0", "-c", "-O", "qcow2", "DIR/top.qcow2", "DIR/o"], output: "o",
      format: "qcow2"),
    Run(
      arguments: [
        "-S", "0", "-B", "base.qcow2", "-F", "qcow2", "-O", "qcow2", "DIR/top.qcow2", "DIR/o",
      ],
      output: "o", format: "qcow2"),
    Run(
      arguments: ["-B", "base.qcow2", "-F", "qcow2", "-O", "qcow2", "DIR/top.qcow2", "DIR/o"],
      output: "o", format: "qcow2"),
    Run(
      arguments: [
        "-p", "-B", "base.qcow2", "-F", "qcow2", "-O", "qcow2", "DIR/top.qcow2", "DIR/o",
      ],
      output: "o", format: "qcow2"),
    Run(
      arguments: [
        "-o", "backing_file=base.qcow2,backing_fmt=qcow2", "-O", "qcow2", "DIR/top.qcow2", "DIR/o",
      ],
      output: "o", format: "qcow2"),
    Run(
      arguments: ["--salvage", "-O", "raw", failingStatus("data.raw", sectors: [1000]), "DIR/o"],
      output: "o", format: "raw"),
    Run(
      arguments: [
        "--salvage", "-p", "-O", "qcow2", failingStatus("data.raw", sectors: [1000, 1500]), "DIR/o",
      ],
      output: "o", format: "qcow2"),
    Run(
      arguments: [
        "--salvage", "-q", "-O", "raw", failingStatus("data.raw", sectors: [0]), "DIR/o",
      ],
      output: "o", format: "raw"),
  ]

  @Test(arguments: runs)
  func sameMessagesAndMap(_ run: Run) async throws {
    let result = try await runImageCommand(["convert"] + run.arguments, setup: Self.setup)
    #expect(result.spindle == result.qemu, "\(result)")
    let maps = try await [result.qemuDirectory, result.spindleDirectory].asyncMap { directory in
      var map = try await runProcess(
        "qemu-img", ["map", "--output=json", "-f", run.format, "\(directory)/\(run.output)"])
      map.output = map.output.replacingOccurrences(of: directory, with: "DIR")
      return map
    }
    #expect(maps[0].status == 0, "\(maps[0])")
    #expect(
      maps[1] == maps[0], "qemu-img map of QEMU's image:\n\(maps[0])\nof Spindle's:\n\(maps[1])")
    let compared = try await result.compareContents(run.output, format: run.format)
    #expect(compared.status == 0, "\(compared)")
  }
}

extension Array {
  /// `map` with an async transform, in order.
  fileprivate func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
    var results: [T] = []
    for element in self { results.append(try await transform(element)) }
    return results
  }
}
