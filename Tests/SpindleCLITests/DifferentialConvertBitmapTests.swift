import BlockTestSupport
import Foundation
import Testing

/// `convert --bitmaps [--skip-broken-bitmaps]` against qemu-img 7.2 on the
/// images of ``DifferentialBitmapTests/setup(_:)``: the same output and
/// status, and targets byte-identical to qemu-img's (unless `-n`), read the
/// same by `qemu-img info --output=json`, `qemu-img compare` and, bitmap by
/// bitmap, `nbdinfo --map=qemu:dirty-bitmap:NAME` over qemu-nbd, and clean
/// for `qemu-img check`.
@Suite struct DifferentialConvertBitmapTests {
  /// ``DifferentialBitmapTests/setup(_:)`` plus snap.qcow2: bm.qcow2
  /// with an internal snapshot "s1" taken before more writes.
  static func setup(_ directory: String) async throws {
    try await DifferentialBitmapTests.setup(directory)
    let snap = "\(directory)/snap.qcow2"
    try FileManager.default.copyItem(atPath: "\(directory)/bm.qcow2", toPath: snap)
    try await qemuImg(["snapshot", "-c", "s1", snap])
    try DifferentialInfoSnapshotTests.fixSnapshots(snap)
    try await DifferentialBitmapTests.io("write -P 4 1M 64k", snap)
  }

  static let runs: [[String]] = [
    ["--bitmaps", "-l", "s1", "-O", "qcow2", "DIR/snap.qcow2", "DIR/out.qcow2"],
    ["--bitmaps", "-O", "qcow2", "-o", "cluster_size=2M", "DIR/bm.qcow2", "DIR/out.qcow2"],
    ["--bitmaps", "-O", "qcow2", "DIR/bm.qcow2", "DIR/out.qcow2"],
    ["--bitmaps", "-O", "qcow2", "-o", "cluster_size=512", "DIR/bm.qcow2", "DIR/out.qcow2"],
    ["--bitmaps", "-c", "-O", "qcow2", "DIR/c512.qcow2", "DIR/out.qcow2"],
    ["--bitmaps", "-O", "qcow2", "DIR/plain.qcow2", "DIR/out.qcow2"],
    // -n: onto an image without bitmaps, with other bitmaps, with the
    // same names, of another size.
    ["--bitmaps", "-n", "-O", "qcow2", "DIR/bm.qcow2", "DIR/plain.qcow2"],
    ["--bitmaps", "-n", "-O", "qcow2", "DIR/bm.qcow2", "DIR/other.qcow2"],
    ["--bitmaps", "-n", "-O", "qcow2", "DIR/other.qcow2", "DIR/bm.qcow2"],
    ["--bitmaps", "-n", "-O", "qcow2", "DIR/small.qcow2", "DIR/other.qcow2"],
    // In-use (inconsistent) bitmaps.
    ["--bitmaps", "-O", "qcow2", "DIR/inuse.qcow2", "DIR/out.qcow2"],
    ["--bitmaps", "--skip-broken-bitmaps", "-O", "qcow2", "DIR/inuse.qcow2", "DIR/out.qcow2"],
    ["-q", "--skip-broken-bitmaps", "--bitmaps", "-O", "qcow2", "DIR/inuse.qcow2", "DIR/o.qcow2"],
    // Errors.
    ["--skip-broken-bitmaps", "-O", "qcow2", "DIR/bm.qcow2", "DIR/out.qcow2"],
    ["--skip-broken-bitmaps", "-c", "-C", "-O", "qcow2", "DIR/bm.qcow2", "DIR/out.qcow2"],
    ["--bitmaps", "-O", "qcow2", "DIR/bm.qcow2", "DIR/other.qcow2", "DIR/out.qcow2"],
    ["--bitmaps", "-O", "qcow2", "DIR/r.raw", "DIR/out.qcow2"],
    ["--bitmaps", "-O", "qcow2", "DIR/v2.qcow2", "DIR/out.qcow2"],
    ["--bitmaps", "-O", "raw", "DIR/bm.qcow2", "DIR/out.raw"],
    ["--bitmaps", "-O", "qcow2", "-o", "compat=0.10", "DIR/bm.qcow2", "DIR/out.qcow2"],
    ["--bitmaps", "-n", "-O", "qcow2", "DIR/bm.qcow2", "DIR/v2.qcow2"],
    ["--bitmaps", "-O", "qcow2", "-o", "bogus=1", "DIR/bm.qcow2", "DIR/out.qcow2"],
  ]

  @Test(.requires("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo"), arguments: runs)
  func convertCopiesBitmapsAsQEMU(_ arguments: [String]) async throws {
    var run = try await runImageCommand(
      ["convert"] + arguments, setup: Self.setup)
    run.qemu.error = DifferentialBitmapTests.maskNodeNames(run.qemu.error)
    run.spindle.error = DifferentialBitmapTests.maskNodeNames(run.spindle.error)
    #expect(run.spindle == run.qemu, "\(run)")
    #expect(try run.spindleFileNames() == run.fileNames())
    for name in try run.fileNames() {
      // convert -n over existing data zeroes differently from qemu-img
      // (docs/qemu-img.md): only the bitmaps and the contents are compared.
      if !arguments.contains("-n") {
        #expect(run.sameBytes(name), "\(name) differs after convert \(arguments)")
      }
      guard name.hasSuffix(".qcow2") else { continue }
      try await Self.expectSameImage(name, run)
    }
  }

  /// `name` reads the same from both runs: `qemu-img info --output=json`
  /// (the file's allocated size aside), contents, and each consistent
  /// bitmap's dirty extents (`nbdinfo --map` over `qemu-nbd -B`); Spindle's
  /// copy checks clean unless it holds an in-use bitmap.
  static func expectSameImage(_ name: String, _ run: ImageCommandRun) async throws {
    let spindle = "\(run.spindleDirectory)/\(name)"
    let qemu = "\(run.qemuDirectory)/\(name)"
    let info = try await runProcess("qemu-img", ["info", "--output=json", spindle])
    let qemuInfo = try await runProcess("qemu-img", ["info", "--output=json", qemu])
    func masked(_ text: String, _ directory: String) -> String {
      text.replacingOccurrences(of: directory, with: "DIR").replacingOccurrences(
        of: "\"actual-size\": [0-9]+", with: "", options: .regularExpression)
    }
    #expect(
      masked(info.output, run.spindleDirectory) == masked(qemuInfo.output, run.qemuDirectory),
      "\(name) info")
    let compare = try await run.compareContents(name)
    #expect(compare.status == 0, "\(name): \(compare)")
    let bitmaps = try bitmapNames(qemuInfo.output)
    for bitmap in bitmaps.consistent {
      func map(_ path: String) async throws -> ToolResult {
        try await runNBDClient(
          "nbdinfo",
          ["--map=qemu:dirty-bitmap:\(bitmap)"]
            + NBDServer.qemu.activated(["-r", "-f", "qcow2", "-B", bitmap, path]))
      }
      let spindleMap = try await map(spindle)
      #expect(spindleMap.status == 0, "\(spindleMap)")
      #expect(spindleMap == (try await map(qemu)), "\(name) bitmap \(bitmap)")
    }
    if !bitmaps.inUse {
      let check = try await run.checkSpindleImage(name)
      #expect(check.status == 0, "\(name): \(check)")
    }
  }

  /// The names of the bitmaps not in use in `qemu-img info --output=json`,
  /// and whether any is in use.
  static func bitmapNames(_ json: String) throws -> (consistent: [String], inUse: Bool) {
    let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
    let specific = object?["format-specific"] as? [String: Any]
    let data = specific?["data"] as? [String: Any]
    let bitmaps = data?["bitmaps"] as? [[String: Any]] ?? []
    var names: [String] = []
    var inUse = false
    for bitmap in bitmaps {
      let flags = bitmap["flags"] as? [String] ?? []
      if flags.contains("in-use") {
        inUse = true
      } else if let name = bitmap["name"] as? String {
        names.append(name)
      }
    }
    return (names, inUse)
  }
}
