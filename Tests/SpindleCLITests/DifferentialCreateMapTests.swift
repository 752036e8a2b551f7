import BlockTestSupport
import Foundation
import Testing

/// The allocation of the files `qemu-img create` (and `convert`, `resize`)
/// makes, against Spindle's, compared by `qemu-img map --output=json`:
/// QEMU's file protocol writes the first block (4 KiB, or a sector for
/// small files) of a file it grows from empty, so a new raw image maps a
/// data run at offset 0.
@Suite(.requires("qemu-img"))
struct DifferentialCreateMapTests {
  static func setup(_ directory: String) async throws {
    // An empty file, and a sparse one with no data at all.
    _ = FileManager.default.createFile(atPath: "\(directory)/empty.raw", contents: nil)
    let sparse = try FileHandle(forWritingTo: URL(fileURLWithPath: "\(directory)/empty.raw"))
    try sparse.close()
    _ = FileManager.default.createFile(atPath: "\(directory)/hole.raw", contents: nil)
    let hole = try FileHandle(forWritingTo: URL(fileURLWithPath: "\(directory)/hole.raw"))
    try hole.truncate(atOffset: 1 << 20)
    try hole.close()
  }

  struct Run: Sendable, CustomTestStringConvertible {
    var arguments: [String]
    /// The files mapped afterwards, with the format to map them as.
    var maps: [(name: String, format: String)] = [("o", "raw")]

    var testDescription: String { arguments.joined(separator: " ") }
  }

  static let runs: [Run] = [
    Run(arguments: ["create", "-f", "raw", "DIR/o", "1M"]),
    Run(arguments: ["create", "-f", "raw", "DIR/o", "4096"]),
    Run(arguments: ["create", "-f", "raw", "DIR/o", "4095"]),
    Run(arguments: ["create", "-f", "raw", "DIR/o", "1000"]),
    Run(arguments: ["create", "-f", "raw", "DIR/o", "512"]),
    Run(arguments: ["create", "-f", "raw", "DIR/o", "0"]),
    Run(arguments: ["create", "-f", "raw", "-o", "preallocation=falloc", "DIR/o", "1M"]),
    Run(arguments: ["create", "-f", "raw", "-o", "preallocation=full", "DIR/o", "64k"]),
    Run(arguments: ["create", "-f", "raw", "DIR/empty.raw", "1M"], maps: [("empty.raw", "raw")]),
    Run(
      arguments: ["create", "-f", "qcow2", "DIR/o", "1M"], maps: [("o", "qcow2"), ("o", "raw")]),
    Run(
      arguments: ["create", "-f", "qcow2", "-o", "preallocation=metadata", "DIR/o", "1M"],
      maps: [("o", "qcow2"), ("o", "raw")]),
    Run(
      arguments: ["create", "-f", "qcow2", "-o", "data_file=DIR/d.raw", "DIR/o", "1M"],
      maps: [("o", "raw"), ("d.raw", "raw")]),
    Run(arguments: ["resize", "-f", "raw", "DIR/empty.raw", "1M"], maps: [("empty.raw", "raw")]),
    Run(arguments: ["convert", "-f", "raw", "-O", "raw", "DIR/hole.raw", "DIR/o"]),
    Run(
      arguments: ["convert", "-f", "raw", "-O", "qcow2", "DIR/hole.raw", "DIR/o"],
      maps: [("o", "qcow2")]),
  ]

  @Test(arguments: runs)
  func sameAllocation(_ run: Run) async throws {
    let result = try await runImageCommand(run.arguments, setup: Self.setup)
    #expect(result.spindle == result.qemu, "\(result)")
    for (name, format) in run.maps {
      var maps: [ToolResult] = []
      for directory in [result.qemuDirectory, result.spindleDirectory] {
        var map = try await runProcess(
          "qemu-img", ["map", "--output=json", "-f", format, "\(directory)/\(name)"])
        map.output = map.output.replacingOccurrences(of: directory, with: "DIR")
        maps.append(map)
      }
      #expect(maps[0].status == 0, "\(maps[0])")
      #expect(
        maps[1] == maps[0], "\(name) as \(format): QEMU's\n\(maps[0])\nSpindle's:\n\(maps[1])")
      #expect(result.sameBytes(name), "\(name) differs")
    }
  }
}
