import BlockTestSupport
import Foundation
import Testing

/// Persistent bitmaps kept current by writes: the same qemu-io commands run
/// by qemu-io and by `spindle qemu-io` on images with enabled, disabled and
/// in-use bitmaps leave byte-identical images, so QEMU reads exactly the
/// written ranges at each bitmap's granularity from Spindle's; an in-use
/// bitmap (left by a killed program) stays inconsistent and untouched.
@Suite struct DifferentialBitmapWriteTests {
  /// Image set-ups: the bitmaps qemu-img adds (and whether the first is
  /// then marked in use), and the image's cluster size.
  struct Setup: Sendable, CustomStringConvertible {
    var clusterSize: String
    var bitmaps: [[String]]
    var firstInUse = false
    var description: String { "\(clusterSize) \(bitmaps) inUse=\(firstInUse)" }
  }

  static let setups: [Setup] = [
    Setup(
      clusterSize: "64k",
      bitmaps: [["b0"], ["-g", "4k", "b1"], ["-g", "512", "--disable", "b2"]]),
    Setup(clusterSize: "512", bitmaps: [["-g", "512", "b0"], ["-g", "1M", "b1"]]),
    Setup(clusterSize: "64k", bitmaps: [["b0"], ["-g", "8k", "b1"]], firstInUse: true),
  ]

  static let commands = [
    "write 1M 4k", "write -P 7 3M 100k", "write -z 6M 64k", "discard 7M 64k",
    "write 8388096 512",
  ]

  @Test(.requires("qemu-img", "qemu-io"), arguments: setups)
  func writesMarkPersistentBitmapsAsQEMUs(_ setup: Setup) async throws {
    let fixture = try ImageFixture()
    let qemu = fixture.path("q.qcow2")
    let spindle = fixture.path("s.qcow2")
    for path in [qemu, spindle] {
      try await qemuImg([
        "create", "-q", "-f", "qcow2", "-o", "cluster_size=\(setup.clusterSize)", path, "8M",
      ])
      // Options first, the bitmap's name last.
      for bitmap in setup.bitmaps {
        try await qemuImg(["bitmap", "--add"] + bitmap.dropLast() + [path, bitmap.last ?? ""])
      }
      if setup.firstInUse { try DifferentialBitmapTests.markFirstBitmapInUse(path) }
    }
    let arguments = Self.commands.flatMap { ["-c", $0] }
    let qemuRun = try await runProcess("qemu-io", arguments + [qemu])
    let spindleRun = await runSpindle(["qemu-io"] + arguments + [spindle])
    #expect(spindleRun.masked(replacing: spindle) == qemuRun.masked(replacing: qemu))
    #expect(
      try Data(contentsOf: URL(fileURLWithPath: spindle))
        == Data(contentsOf: URL(fileURLWithPath: qemu)), "\(setup)")
    let info = try await runProcess("qemu-img", ["info", "--output=json", spindle])
    let qemuInfo = try await runProcess("qemu-img", ["info", "--output=json", qemu])
    #expect(
      info.output.replacingOccurrences(of: spindle, with: "IMG")
        == qemuInfo.output.replacingOccurrences(of: qemu, with: "IMG"))
    let check = try await runProcess("qemu-img", ["check", spindle])
    #expect(check.status == 0, "\(check)")
  }
}
