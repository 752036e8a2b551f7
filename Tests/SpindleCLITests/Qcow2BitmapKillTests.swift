import BlockTestSupport
import Foundation
import Testing

/// `spindle io` killed by SIGKILL at random moments of a long script of
/// writes, zero-writes, discards and flushes on an image with an enabled
/// and a disabled persistent bitmap: `qemu-img check` finds no corruption
/// (leaks at worst), the killed image reads the same in `qemu-img info`
/// and Spindle's `info` (bitmaps in use once the open marked them), and
/// the next open handles the in-use bitmaps as QEMU's: `bitmap --clear`
/// gives qemu-img's output on a copy, and a write through `spindle io`
/// leaves an image qemu-img checks clean once its leaks are repaired.
@Suite(
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"),
  .requires("qemu-img", "qemu-io"),
  .timeLimit(.minutes(10)))
struct Qcow2BitmapKillTests {
  static let diskSize: Int64 = 64 << 20

  @Test func killedWithEnabledBitmaps() async throws {
    let fixture = try ImageFixture()
    var random = KillTestRandom(state: 0xB17_3A95)
    var runMicroseconds: UInt32 = 0
    // How long a run that only opens and closes the image takes: kills
    // come later, so that most find the bitmaps marked in use.
    let probe = fixture.path("probe.qcow2")
    try await qemuImg(["create", "-q", "-f", "qcow2", probe, "\(Self.diskSize)"])
    try await qemuImg(["bitmap", "--add", probe, "b0"])
    let probeStart = DispatchTime.now().uptimeNanoseconds
    _ = try await runAndKill(
      SpindleExecutable.path!, ["io", "-c", "length", probe], afterMicroseconds: nil)
    let openMicroseconds = UInt32(
      min(5_000_000, (DispatchTime.now().uptimeNanoseconds - probeStart) / 1000))
    var killedInUse = 0
    for iteration in 0..<5 {
      let path = fixture.path("kill-\(iteration).qcow2")
      try await qemuImg(["create", "-q", "-f", "qcow2", path, "\(Self.diskSize)"])
      try await qemuImg(["bitmap", "--add", path, "b0"])
      try await qemuImg(["bitmap", "--add", "-g", "4k", "--disable", path, "b1"])
      let script = KillScript(
        count: 240, diskSize: Self.diskSize, clusterSize: 65536, random: &random)
      var arguments = ["io", "-f", "qcow2"]
      for command in script.commands { arguments += ["-c", command] }
      // The last run kills itself after its writes (qemu-io's sigraise): one
      // kill at least certainly finds the bitmaps in use, however the timed
      // ones land on a loaded machine.
      let lastIteration = iteration == 4
      if lastIteration { arguments += ["-c", "sigraise 9"] }
      arguments.append(path)
      // The first run is not killed: it measures how long a run takes.
      let delay =
        iteration == 0 || lastIteration
        ? nil
        : UInt32.random(
          in: openMicroseconds..<max(openMicroseconds + 1, runMicroseconds), using: &random)
      let started = DispatchTime.now().uptimeNanoseconds
      let (output, killed) = try await runAndKill(
        SpindleExecutable.path!, arguments, afterMicroseconds: delay)
      if iteration == 0 {
        runMicroseconds = UInt32(
          min(10_000_000, (DispatchTime.now().uptimeNanoseconds - started) / 1000))
      }
      let context = "iteration \(iteration), kill after \(delay ?? 0) µs, killed \(killed)"
      #expect(!output.contains("failed"), "\(context): \(output)")

      let check = try await runUnlocked(QEMU.qemuImg!, ["check", path])
      #expect(check.status == 0 || check.status == 3, "\(context): \(check)")
      let info = try await runProcess("qemu-img", ["info", "--output=json", path])
      let spindleInfo = await runSpindle(["qemu-img", "info", "--output=json", path])
      #expect(spindleInfo == info, "\(context)")
      let inUse = info.output.contains("in-use")
      #expect(killed || !inUse, "\(context): a completed run leaves no bitmap in use")
      if inUse { killedInUse += 1 }

      // The next opens, on copies.
      let qemuCopy = try fixture.copy(path, to: "q-\(iteration).qcow2")
      let spindleCopy = try fixture.copy(path, to: "s-\(iteration).qcow2")
      let clear = try await runProcess("qemu-img", ["bitmap", "--clear", qemuCopy, "b0"])
      let spindleClear = await runSpindle(["qemu-img", "bitmap", "--clear", spindleCopy, "b0"])
      #expect(
        spindleClear.masked(replacing: spindleCopy) == clear.masked(replacing: qemuCopy),
        "\(context)")
      let write = await runSpindle(["qemu-io", "-c", "write -P 5 0 64k", path])
      #expect(write.status == 0, "\(context): \(write)")
      let repair = try await runProcess("qemu-img", ["check", "-r", "leaks", path])
      #expect(repair.status == 0, "\(context): \(repair)")
      let after = try await runProcess("qemu-img", ["info", "--output=json", path])
      #expect(after.output.contains("in-use") == inUse, "\(context): \(after)")
    }
    // The test proves something only when a kill left bitmaps in use.
    #expect(killedInUse > 0)
  }
}
