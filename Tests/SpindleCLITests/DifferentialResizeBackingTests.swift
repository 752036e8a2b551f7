import BlockTestSupport
import Foundation
import Testing

/// `qemu-img resize` of a qcow2 image over a backing file, against Spindle's:
/// when the backing file is longer than the old size, QEMU zero-writes the
/// new area so that the backing file's data does not show through; when it is
/// not, the new area stays unallocated. Output, exit status, the files byte
/// for byte, and what the grown area reads.
@Suite(.requires("qemu-img", "qemu-io"))
struct DifferentialResizeBackingTests {
  /// A 1 MiB raw backing file of 0xff bytes and overlays over it: `t.qcow2`
  /// (503 KiB), `v2.qcow2` (compat=0.10, 503 KiB), `x.qcow2` (extended L2
  /// entries, 503 KiB), `small.qcow2` (128 KiB) and `long.qcow2` (2 MiB,
  /// longer than its backing file).
  static func setup(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    try await qemuImg(["create", "-q", "-f", "raw", path("b.raw"), "1M"])
    let filled = try await runProcess(
      "qemu-io", ["-f", "raw", "-c", "write -P 0xff 0 1M", path("b.raw")])
    #expect(filled.status == 0, "\(filled)")
    let overlays: [(String, [String], String)] = [
      ("t.qcow2", [], "503k"), ("v2.qcow2", ["-o", "compat=0.10"], "503k"),
      ("x.qcow2", ["-o", "extended_l2=on"], "503k"), ("small.qcow2", [], "128k"),
      ("long.qcow2", [], "2M"),
    ]
    for (name, options, size) in overlays {
      try await qemuImg(
        ["create", "-q", "-f", "qcow2"] + options + ["-F", "raw", "-b", "b.raw", path(name), size])
    }
  }

  static let runs: [[String]] = [
    ["DIR/t.qcow2", "1013k"], ["DIR/t.qcow2", "512k"], ["DIR/v2.qcow2", "1013k"],
    ["DIR/x.qcow2", "1013k"], ["DIR/small.qcow2", "2M"], ["DIR/long.qcow2", "3M"],
  ]

  @Test(arguments: runs)
  func resizeMatches(_ arguments: [String]) async throws {
    let run = try await runImageCommand(["resize"] + arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
    for name in try run.fileNames() {
      #expect(run.sameBytes(name), "\(name) differs")
    }
    let image = try #require(arguments.last(where: { $0.hasPrefix("DIR/") }))
    for directory in [run.qemuDirectory, run.spindleDirectory] {
      let path = image.replacingOccurrences(of: "DIR", with: directory)
      let check = try await runProcess("qemu-img", ["check", path])
      #expect(check.status == 0, "\(check)")
    }
    let qemuMap = try await runProcess(
      "qemu-img",
      ["map", "--output=json", image.replacingOccurrences(of: "DIR", with: run.qemuDirectory)])
    let spindleMap = try await runProcess(
      "qemu-img",
      ["map", "--output=json", image.replacingOccurrences(of: "DIR", with: run.spindleDirectory)])
    #expect(spindleMap.output == qemuMap.output)
  }

  /// With metadata preallocation QEMU also copies the backing file's bytes
  /// past the new end into the last cluster (its copy-on-write of the
  /// preallocated cluster's tail), which no guest can read: the guest
  /// content, the map and the check must match, not the bytes.
  @Test func metadataPreallocationMatches() async throws {
    let run = try await runImageCommand(
      ["resize", "--preallocation=metadata", "DIR/t.qcow2", "1013k"], setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
    let compare = try await runProcess(
      "qemu-img",
      ["compare", "\(run.qemuDirectory)/t.qcow2", "\(run.spindleDirectory)/t.qcow2"])
    #expect(compare.status == 0, "\(compare)")
    let qemuMap = try await runProcess(
      "qemu-img", ["map", "--output=json", "\(run.qemuDirectory)/t.qcow2"])
    let spindleMap = try await runProcess(
      "qemu-img", ["map", "--output=json", "\(run.spindleDirectory)/t.qcow2"])
    #expect(spindleMap.output == qemuMap.output)
  }

  /// The command pair: after growing to 1013 KiB, the area from
  /// 503 KiB on reads as zeroes, not as the backing file's 0xff.
  @Test func grownAreaReadsZeroes() async throws {
    let run = try await runImageCommand(["resize", "DIR/t.qcow2", "1013k"], setup: Self.setup)
    #expect(run.spindle.status == 0, "\(run)")
    let read = try await runProcess(
      "qemu-io", ["-c", "read -P 0 503k 510k", "\(run.spindleDirectory)/t.qcow2"])
    #expect(read.status == 0 && !read.output.contains("Pattern verification failed"), "\(read)")
  }
}
