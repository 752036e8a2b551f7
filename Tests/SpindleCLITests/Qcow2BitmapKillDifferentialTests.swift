import BlockTestSupport
import Foundation
import Testing

/// Killed while persistent bitmaps are enabled: `qemu-io` and `spindle io`
/// (linked as qemu-io) run the same writes on copies of an image with an
/// enabled and a disabled bitmap and die by `sigraise 9`. Both leave the
/// bitmaps in use, byte-identical images that `qemu-img check` finds
/// consistent; the next open treats them as QEMU's does: `info` shows them
/// in use, `bitmap --clear` and `convert --bitmaps` refuse them as
/// inconsistent, a later write through either tool leaves them untouched
/// (byte-identical again), and `check -r all` keeps them.
@Suite(
  .requires("qemu-io", "qemu-img"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct Qcow2BitmapKillDifferentialTests {
  static let scripts: [[String]] = [
    ["write -P 1 0 64k", "sigraise 9"],
    ["write -P 1 0 64k", "write -P 2 3M 4k", "flush", "write -z 5M 64k", "sigraise 9"],
    ["discard 0 64k", "write -P 3 1M 512", "sigraise 9"],
    ["sigraise 9"],
  ]

  @Test(arguments: scripts)
  func killedBitmapsMatchQEMU(_ commands: [String]) async throws {
    let fixture = try ImageFixture()
    let base = fixture.path("base.qcow2")
    try await qemuImg(["create", "-q", "-f", "qcow2", base, "8M"])
    try await qemuImg(["bitmap", "--add", base, "b0"])
    try await qemuImg(["bitmap", "--add", "-g", "4k", "--disable", base, "b1"])
    try await DifferentialBitmapTests.io("write -P 9 2M 128k", base)
    let images = [
      try fixture.copy(base, to: "qemu.qcow2"), try fixture.copy(base, to: "spin.qcow2"),
    ]
    let links = try SpindleExecutable.links()
    /// Runs a qemu-io command line with the real qemu-io on the first
    /// image and Spindle's on the second; expects the same status.
    func io(_ arguments: [String]) async throws {
      let qemu = try await runProcess("qemu-io", arguments + [images[0]])
      let spindle = try await runProcess(
        "qemu-io", arguments + [images[1]], environment: ["PATH": links.directory.path])
      #expect(spindle.status == qemu.status, "\(qemu)\n\(spindle)")
    }
    /// The same qemu-img command on both images gives the same output.
    func sameResult(_ arguments: [String]) async throws {
      let results = try await images.asyncMap { image in
        try await runUnlocked(QEMU.qemuImg!, arguments + [image]).masked(replacing: image)
      }
      #expect(results[0] == results[1], "\(arguments)")
    }
    func sameBytes(_ step: String) {
      #expect(
        FileManager.default.contents(atPath: images[0])
          == FileManager.default.contents(atPath: images[1]), "the images differ \(step)")
    }
    try await io(commands.flatMap { ["-c", $0] })
    sameBytes("after the kill")
    try await sameResult(["check"])
    try await sameResult(["info", "--output=json"])
    let check = try await runUnlocked(QEMU.qemuImg!, ["check", images[1]])
    #expect(check.status == 0, "\(check)")
    #expect(check.output.contains("No errors"), "\(check)")

    // The next opens: the bitmaps are inconsistent for both tools.
    for image in images {
      let info = try await runProcess("qemu-img", ["info", image])
      #expect(info.output.contains("in-use"), "\(info)")
    }
    let clear = try await runImageCommandPair(["bitmap", "--clear"], images, suffix: ["b0"])
    #expect(clear.spindle == clear.qemu)
    #expect(clear.qemu.status == 1, "\(clear.qemu)")
    let convert = try await runImageCommandPair(
      ["convert", "--bitmaps", "-O", "qcow2"], images, suffix: [fixture.path("out.qcow2")])
    #expect(convert.spindle == convert.qemu)
    #expect(convert.qemu.error.contains("Cannot copy inconsistent bitmap"), "\(convert.qemu)")
    try await io(["-c", "write -P 4 6M 64k"])
    sameBytes("after a later write")
    try await sameResult(["check", "-r", "all"])
    sameBytes("after check -r all")
    try await sameResult(["info", "--output=json"])
  }
}

/// Runs `arguments + [image] + suffix` with qemu-img on the first image and
/// Spindle (in-process, as qemu-img) on the second, images masked.
private func runImageCommandPair(_ arguments: [String], _ images: [String], suffix: [String])
  async throws -> (qemu: ToolResult, spindle: ToolResult)
{
  let qemu = try await runProcess("qemu-img", arguments + [images[0]] + suffix)
    .masked(replacing: images[0])
  let spindle = await runSpindle(["qemu-img"] + arguments + [images[1]] + suffix)
    .masked(replacing: images[1])
  return (qemu, spindle)
}

extension Array {
  fileprivate func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
    var results: [T] = []
    for element in self { results.append(try await transform(element)) }
    return results
  }
}
