import BlockTestSupport
import Foundation
import Testing

/// `qemu-img snapshot` on images with persistent bitmaps, against qemu-img
/// 7.2: snapshots are created, listed and deleted with the bitmaps kept
/// (stored at close), and applying one is refused while the image has any
/// bitmap, an inconsistent one too (QEMU's `bdrv_snapshot_goto`: "Could
/// not apply snapshot 'NAME': Device has active dirty bitmaps", before the
/// snapshot is even looked up), and allowed once they are removed. Each
/// step runs with qemu-img on one copy and Spindle on the other: the same
/// output and status, byte-identical images once the new snapshots' dates
/// are masked.
@Suite(.requires("qemu-img", "qemu-io"))
struct DifferentialSnapshotBitmapTests {
  static let steps: [[String]] = [
    ["snapshot", "-c", "s1", "IMG"], ["snapshot", "-l", "IMG"],
    ["snapshot", "-a", "s1", "IMG"], ["snapshot", "-a", "nope", "IMG"],
    ["snapshot", "-c", "s2", "IMG"], ["snapshot", "-d", "s1", "IMG"],
    ["bitmap", "--remove", "IMG", "b0"], ["snapshot", "-a", "s2", "IMG"],
    ["bitmap", "--remove", "IMG", "b1"], ["snapshot", "-a", "s2", "IMG"],
    ["snapshot", "-a", "nope", "IMG"], ["check", "IMG"],
  ]

  @Test(arguments: [false, true])
  func snapshotsOfImagesWithBitmapsMatchQEMU(firstInUse: Bool) async throws {
    let fixture = try ImageFixture()
    let base = fixture.path("base.qcow2")
    try await qemuImg(["create", "-q", "-f", "qcow2", base, "4M"])
    try await qemuImg(["bitmap", "--add", base, "b0"])
    try await qemuImg(["bitmap", "--add", "-g", "4k", "--disable", base, "b1"])
    try await DifferentialBitmapTests.io("write -P 1 0 1M", base)
    if firstInUse { try DifferentialBitmapTests.markFirstBitmapInUse(base) }
    let images = [
      try fixture.copy(base, to: "qemu.qcow2"), try fixture.copy(base, to: "spin.qcow2"),
    ]
    for step in Self.steps {
      func on(_ image: String) -> [String] { step.map { $0 == "IMG" ? image : $0 } }
      let qemu = try await runProcess("qemu-img", on(images[0])).masked(replacing: images[0])
      let spindle = await runSpindle(["qemu-img"] + on(images[1])).masked(replacing: images[1])
      // The dates `-l` lists were masked on both sides after `-c`.
      #expect(spindle == qemu, "\(step)")
      if step[1] == "-c" {
        for image in images { try DifferentialSnapshotTests.maskSnapshotDates(image) }
      }
      #expect(
        FileManager.default.contents(atPath: images[1])
          == FileManager.default.contents(atPath: images[0]), "the images differ after \(step)")
    }
  }
}
