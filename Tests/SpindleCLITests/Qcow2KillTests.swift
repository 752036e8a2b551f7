import BlockTestSupport
import Foundation
import Testing

/// Runs `spindle io` on a qcow2 image with a long script of writes,
/// zero-writes, discards and flushes and kills it with SIGKILL at a random
/// moment (a uniformly random time within the run, bounded by the fastest
/// unkilled run of each image kind, the first being one): `qemu-img check` must find no
/// corruption (leaks are allowed and `check -r leaks` repairs them), and
/// every slot whose last command came before the last flush reported on
/// standard output reads back as written through qemu-io. The output may be
/// block-buffered and lost at the kill: that only makes fewer flushes count
/// as reported, never more.
@Suite(
  "qcow2 SIGKILL crash safety",
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"),
  .requires("qemu-img", "qemu-io"),
  .timeLimit(.minutes(10)))
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
    var runMicroseconds: UInt32 = 0
    // Six runs, and more (up to 12) while none was killed: a run can be
    // much slower than the next (the first is a cold start, and a full
    // test run loads the machine), so delays are bounded by the fastest
    // unkilled run.
    var iteration = 0
    while iteration < 6 || (killedRuns == 0 && iteration < 12) {
      defer { iteration += 1 }
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
      // The first run is not killed: it measures how long a run takes.
      let delay =
        iteration == 0 ? nil : UInt32.random(in: 0..<max(1, runMicroseconds), using: &random)
      let started = DispatchTime.now().uptimeNanoseconds
      let (output, killed) = try await runAndKill(
        SpindleExecutable.path!, arguments, afterMicroseconds: delay)
      if !killed {
        let elapsed = UInt32(
          min(10_000_000, (DispatchTime.now().uptimeNanoseconds - started) / 1000))
        runMicroseconds = iteration == 0 ? elapsed : min(runMicroseconds, elapsed)
      }
      if killed { killedRuns += 1 }
      let context = "cluster \(clusterSize), iteration \(iteration), kill after \(delay ?? 0) µs"
      #expect(!output.contains("failed"), "\(context): \(output)")
      // `length` prints the disk size after each completed flush.
      let completedFlushes = output.split(separator: "\n").filter { $0 == "64 MiB" }.count
      let durable = completedFlushes == 0 ? 0 : script.flushes[completedFlushes - 1]

      let check = try await runUnlocked(QEMU.qemuImg!, ["check", path])
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

/// Runs a QEMU tool on an image a killed process had open, again while it
/// fails to get the image's lock: the kernel tears a killed process's
/// io_uring down asynchronously, and its files (with their OFD locks) stay
/// open until then. Polls a condition, at most about 5 seconds.
func runUnlocked(_ program: String, _ arguments: [String]) async throws -> ToolResult {
  var result = try await runProcess(program, arguments)
  for _ in 0..<500 where result.error.contains("Failed to get") {
    try await Task.sleep(nanoseconds: 10_000_000)
    result = try await runProcess(program, arguments)
  }
  return result
}

/// Runs a program, reads its standard output, and sends it SIGKILL
/// `microseconds` after it started (nil: never); returns everything it
/// printed, and whether the signal killed it (it may have finished first).
func runAndKill(_ program: String, _ arguments: [String], afterMicroseconds microseconds: UInt32?)
  async throws -> (output: String, killed: Bool)
{
  let process = try ChildProcess(program, arguments, mergeError: true)
  let reaped = ReapedFlag()
  if let microseconds {
    Thread {
      usleep(microseconds)
      // Only while it runs: once reaped, its pid could belong to another
      // process.
      reaped.unlessSet { process.send(SIGKILL) }
    }.start()
  }
  let text = await ChildProcess.readAll(process.output)
  let termination = await process.wait()
  reaped.set()
  return (text, termination.signaled)
}

/// Whether a child was reaped, so that a late kill never hits a reused pid.
private final class ReapedFlag: @unchecked Sendable {
  private let lock = NSLock()
  private var isSet = false

  func set() { lock.withLock { isSet = true } }

  /// Runs `body` while holding the flag unset.
  func unlessSet(_ body: () -> Void) { lock.withLock { if !isSet { body() } } }
}
