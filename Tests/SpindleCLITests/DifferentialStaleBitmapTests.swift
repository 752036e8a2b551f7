import BlockTestSupport
import Foundation
import Testing

/// Images whose bitmaps a program lacking bitmap support invalidated (the
/// autoclear bit cleared, ``DifferentialInfoSnapshotTests/bitmapPatches``):
/// every command warns at open as QEMU's qcow2 driver does, and the
/// bitmaps count for nothing (`measure` reports "bitmaps size: 0",
/// `convert --bitmaps` copies none).
@Suite struct DifferentialStaleBitmapTests {
  static let runs: [[String]] = [
    ["measure", "-O", "qcow2", "DIR/stale.qcow2"],
    ["measure", "--output=json", "-O", "qcow2", "DIR/stale.qcow2"],
    ["measure", "-O", "qcow2", "DIR/bitmaps.qcow2"],
    ["measure", "-O", "qcow2", "DIR/inuse.qcow2"],
    ["check", "DIR/stale.qcow2"], ["map", "DIR/stale.qcow2"],
    ["compare", "DIR/stale.qcow2", "DIR/bitmaps.qcow2"],
    ["convert", "--bitmaps", "-O", "qcow2", "DIR/stale.qcow2", "DIR/out.qcow2"],
  ]

  @Test(.requires("qemu-img", "qemu-io"), arguments: runs)
  func staleBitmapsAsQEMU(_ arguments: [String]) async throws {
    let run = try await runImageCommand(arguments, setup: DifferentialInfoSnapshotTests.setup)
    #expect(run.spindle == run.qemu, "\(run)")
  }

  /// `check` and `check -r all` of every patched image (in use, stale,
  /// broken directories and entries): the same output, status and files.
  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: DifferentialInfoSnapshotTests.bitmapPatches.map(\.0), [false, true])
  func checkOfPatchedBitmapsAsQEMU(_ name: String, _ repair: Bool) async throws {
    let run = try await runImageCommand(
      ["check"] + (repair ? ["-r", "all"] : []) + ["DIR/\(name).qcow2"],
      setup: DifferentialInfoSnapshotTests.setup)
    #expect(run.spindle == run.qemu, "\(run)")
    #expect(run.sameBytes("\(name).qcow2"), "\(name).qcow2 differs")
  }
}
