import BlockTestSupport
import Foundation
import Testing

/// Lazy refcounts are lazy: with `lazy_refcounts=on`, a guest write's
/// refcount update stays in the refcount cache until the image is closed,
/// so `qemu-io` and `spindle io` killed by `sigraise 9` after the same
/// writes leave the same dirty image, whose `qemu-img check` reports the
/// same "refcount=0 reference=1" errors; closed normally, both leave a clean
/// image. The images must be byte-identical.
@Suite(
  .requires("qemu-io", "qemu-img"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct Qcow2LazyRefcountKillDifferentialTests {
  static let scripts: [[String]] = [
    ["write -P 1 0 64k", "sigraise 9"],
    ["write -P 1 0 64k", "write -P 2 64k 64k", "flush", "write -P 3 1M 4k", "sigraise 9"],
    ["write -P 1 0 64k", "write -P 4 128k 64k", "write -z -u 0 64k", "sigraise 9"],
    ["write -P 1 0 64k", "write -P 2 3M 64k", "write -z 64k 64k"],
    ["write -P 1 0 64k", "truncate 8M", "write -P 5 6M 64k", "sigraise 9"],
    ["write -P 1 0 64k", "reopen -o lazy-refcounts=off", "sigraise 9"],
    ["write -P 1 0 64k", "reopen -r", "sigraise 9"],
  ]

  @Test(arguments: scripts)
  func killedImageMatches(_ commands: [String]) async throws {
    let fixture = try ImageFixture()
    let base = fixture.path("base.qcow2")
    try await qemuImg(["create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", base, "4M"])
    let qemuImage = try fixture.copy(base, to: "qemu.qcow2")
    let spindleImage = try fixture.copy(base, to: "spindle.qcow2")
    let arguments = commands.flatMap { ["-c", $0] }
    // The spindle executable, linked as qemu-io: `sigraise 9` kills it.
    let links = try SpindleExecutable.links()
    let qemu = try await runProcess("qemu-io", arguments + [qemuImage])
    let spindle = try await runProcess(
      "qemu-io", arguments + [spindleImage], environment: ["PATH": links.directory.path])
    #expect(spindle.status == qemu.status, "\(qemu)\n\(spindle)")
    let qemuCheck = try await runProcess("qemu-img", ["check", qemuImage])
      .masked(replacing: qemuImage)
    let spindleCheck = try await runProcess("qemu-img", ["check", spindleImage])
      .masked(replacing: spindleImage)
    #expect(spindleCheck == qemuCheck)
    let qemuBytes = FileManager.default.contents(atPath: qemuImage)
    let spindleBytes = FileManager.default.contents(atPath: spindleImage)
    #expect(qemuBytes == spindleBytes, "the images differ")
  }
}
