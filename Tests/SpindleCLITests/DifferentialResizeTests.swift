import BlockTestSupport
import Foundation
import Testing

/// `qemu-img resize` against Spindle's: output, errors, exit statuses and the
/// resulting files, byte for byte.
@Suite struct DifferentialResizeTests {
  static func setup(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    try await qemuImg(["create", "-q", "-f", "qcow2", path("q.qcow2"), "1M"])
    try await qemuImg(["create", "-q", "-f", "raw", path("r.raw"), "1M"])
    for (format, name) in [("raw", "r.raw"), ("qcow2", "q.qcow2")] {
      let result = try await runProcess(
        "qemu-io", ["-f", format, "-c", "write -P 3 0 1M", path(name)])
      #expect(result.status == 0, "\(result)")
    }
  }

  static let runs: [[String]] = [
    ["DIR/r.raw", "2M"], ["-f", "raw", "DIR/r.raw", "+1M"],
    ["-f", "raw", "DIR/r.raw", "--", "-1M"],
    ["-f", "raw", "DIR/r.raw", "-1M"], ["-f", "raw", "--shrink", "DIR/r.raw", "-512k"],
    ["-f", "raw", "--shrink", "DIR/r.raw", "-10M"], ["-f", "raw", "DIR/r.raw", "1000"],
    ["-f", "raw", "--shrink", "DIR/r.raw", "1000"], ["-f", "raw", "DIR/r.raw", "1234567"],
    ["-q", "-f", "raw", "DIR/r.raw", "4M"], ["-f", "raw", "DIR/r.raw", "x"],
    ["-f", "raw", "DIR/r.raw", "99999E"], ["-f", "raw", "DIR/r.raw", "+8E"],
    ["DIR/q.qcow2", "+1G"], ["-f", "qcow2", "DIR/q.qcow2", "3G"], ["DIR/q.qcow2", "1000"],
    ["DIR/q.qcow2", "1234567"], ["--preallocation=bogus", "DIR/q.qcow2", "2G"],
    ["--preallocation=full", "-f", "raw", "DIR/r.raw", "1M"],
    ["--preallocation=off", "-f", "raw", "DIR/r.raw", "3M"],
    ["DIR/nonexistent", "1M"], ["-f", "qcow2", "DIR/r.raw", "1G"],
    ["--image-opts", "driver=qcow2,file.filename=DIR/q.qcow2", "+1M"],
    ["--image-opts", "driver=raw,file.filename=DIR/r.raw", "2M"],
    ["--image-opts", "DIR/r.raw", "2M"],
    [], ["DIR/r.raw"], ["-Z", "DIR/r.raw", "1M"], ["DIR/a", "DIR/b", "1M"],
  ]

  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: runs)
  func resizeMatches(_ arguments: [String]) async throws {
    let run = try await runImageCommand(["resize"] + arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
    for name in try run.fileNames() {
      #expect(run.sameBytes(name), "\(name) differs")
    }
  }
}
