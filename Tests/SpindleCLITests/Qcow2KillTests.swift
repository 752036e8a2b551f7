import Foundation
import Testing

/// Runs `spindle io` on a qcow2 image with a long script of writes,
/// zero-writes, discards and flushes and kills it with SIGKILL at a random
/// moment (a random number of output lines, then a random delay of up to a
/// few milliseconds): `qemu-img check` must find no corruption (leaks are
/// allowed and `check -r leaks` repairs them), and every slot whose last
/// command came before the last flush reported complete reads back as
/// written through qemu-io.
@Suite(
  "qcow2 SIGKILL crash safety",
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"),
  .enabled(if: QEMU.hasQemuImg && QEMU.hasQemuIO, "qemu-img or qemu-io is not installed"),
  .timeLimit(.minutes(2)))
struct Qcow2KillTests {
  static let diskSize: Int64 = 64 << 20

  @Test(
    "killed at random moments, the image has at worst leaks and keeps flushed writes",
    arguments: [Int64(512), 4096, 65536])
  func killAtRandom(clusterSize: Int64) async throws {
    let fixture = try ImageFixture()
    var random = KillTestRandom(state: 0x5EED_0000 ^ UInt64(clusterSize))
    var killedRuns = 0
    var verifiedReads = 0
    for iteration in 0..<6 {
      let path = fixture.path("kill-\(iteration).qcow2")
      let create = try await runProcess(
        QEMU.qemuImg!,
        [
          "create", "-q", "-f", "qcow2", "-o", "cluster_size=\(clusterSize)", path,
          "\(Self.diskSize)",
        ])
      try #require(create.status == 0, "\(create)")
      let script = KillScript(
        count: 160, diskSize: Self.diskSize, clusterSize: clusterSize, random: &random)
      var arguments = ["io", "-f", "qcow2"]
      for command in script.commands { arguments += ["-c", command] }
      arguments.append(path)
      // Each command prints one or two lines; kill somewhere in the run.
      let killAfter = Int.random(in: 0..<(script.commands.count * 2), using: &random)
      let delay = UInt32.random(in: 0..<3000, using: &random)
      let (output, killed) = try await runAndKill(
        SpindleExecutable.path!, arguments, afterLines: killAfter, delayMicroseconds: delay)
      if killed { killedRuns += 1 }
      let context = "cluster \(clusterSize), iteration \(iteration), kill after \(killAfter) lines"
      #expect(!output.contains("failed"), "\(context): \(output)")
      // `length` prints the disk size after each completed flush.
      let completedFlushes = output.split(separator: "\n").filter { $0 == "64 MiB" }.count
      let durable = completedFlushes == 0 ? 0 : script.flushes[completedFlushes - 1]

      let check = try await runProcess(QEMU.qemuImg!, ["check", path])
      #expect(check.status == 0 || check.status == 3, "\(context): \(check)")
      let repair = try await runProcess(QEMU.qemuImg!, ["check", "-r", "leaks", path])
      #expect(repair.status == 0, "\(context): \(repair)")

      let reads = script.verification(durableBefore: durable)
      guard !reads.isEmpty else { continue }
      verifiedReads += reads.count
      var readArguments = ["-r", "-f", "qcow2"]
      for read in reads { readArguments += ["-c", read] }
      let verify = try await runProcess(QEMU.qemuIO!, readArguments + [path])
      #expect(
        verify.status == 0 && !verify.output.contains("failed")
          && !verify.output.contains("Pattern verification"),
        "\(context): flushed data lost\n\(verify)")
    }
    // The test proves something only when processes died mid-run and
    // flushed data was there to check.
    #expect(killedRuns > 0)
    #expect(verifiedReads > 0)
  }
}

/// Runs a program, reads its standard output line by line, and sends it
/// SIGKILL once `lines` lines have arrived and `delayMicroseconds` more have
/// passed (the kill moment is random, not a synchronisation point); returns
/// everything it printed, and whether the signal killed it (it may have
/// finished first).
func runAndKill(
  _ program: String, _ arguments: [String], afterLines lines: Int, delayMicroseconds: UInt32
) async throws -> (output: String, killed: Bool) {
  let process = Process()
  process.executableURL = URL(fileURLWithPath: program)
  process.arguments = arguments
  let stdout = Pipe()
  process.standardOutput = stdout
  process.standardError = stdout
  process.standardInput = FileHandle.nullDevice
  try process.run()
  stdout.fileHandleForWriting.closeFile()
  let pid = process.processIdentifier
  let text = await withCheckedContinuation { (continuation: CheckedContinuation<String, Never>) in
    Thread {
      let handle = stdout.fileHandleForReading
      var data = Data()
      var killed = false
      while true {
        let chunk = handle.availableData
        if chunk.isEmpty { break }
        data.append(chunk)
        if !killed && data.reduce(0, { $0 + ($1 == 10 ? 1 : 0) }) >= lines {
          killed = true
          usleep(delayMicroseconds)
          kill(pid, SIGKILL)
        }
      }
      continuation.resume(returning: String(decoding: data, as: UTF8.self))
    }.start()
  }
  await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
    Thread {
      process.waitUntilExit()
      continuation.resume()
    }.start()
  }
  return (text, process.terminationReason == .uncaughtSignal)
}
