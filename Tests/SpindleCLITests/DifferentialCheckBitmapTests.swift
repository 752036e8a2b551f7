import BlockTestSupport
import Foundation
import Testing

/// `check` and `check -r` of images with persistent bitmaps: consistent,
/// in use (left by a killed program: inconsistent), invalidated by a
/// program lacking bitmap support, and 512-byte clusters. As qemu-img 7.2,
/// a writable check loads the bitmaps (marking them in use) and stores
/// them at close, counts their clusters, leaves in-use ones as they are,
/// and drops an invalidated extension (its clusters leaked until
/// repaired): same output and status, byte-identical images.
@Suite struct DifferentialCheckBitmapTests {
  /// ``DifferentialBitmapTests/setup(_:)`` plus stale.qcow2 (bm.qcow2 with
  /// the bitmaps autoclear bit cleared).
  static func setup(_ directory: String) async throws {
    try await DifferentialBitmapTests.setup(directory)
    let stale = "\(directory)/stale.qcow2"
    try FileManager.default.copyItem(atPath: "\(directory)/bm.qcow2", toPath: stale)
    var bytes = try Data(contentsOf: URL(fileURLWithPath: stale))
    bytes[95] &= ~1
    try bytes.write(to: URL(fileURLWithPath: stale))
  }

  static let runs: [[String]] = ["bm", "inuse", "stale", "c512"].flatMap { name in
    [[], ["-r", "leaks"], ["-r", "all"], ["--output=json"], ["-r", "all", "--output=json"]].map {
      $0 + ["DIR/\(name).qcow2"]
    }
  }

  @Test(.requires("qemu-img", "qemu-io"), arguments: runs)
  func checkHandlesBitmapsAsQEMU(_ arguments: [String]) async throws {
    let run = try await runImageCommand(["check"] + arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
    for name in try run.fileNames() {
      #expect(run.sameBytes(name), "\(name) differs after check \(arguments)")
    }
  }
}
