import BlockTestSupport
import Foundation
import Testing

/// `spindle img snapshot -c/-a/-d` killed by SIGKILL at a random moment of
/// its run (uniform within the length the first, unkilled run measures) on
/// an image with 512-byte clusters, whose thousands of L2 entries and
/// refcounts make the operation long: `qemu-img check` finds no corruption
/// (leaks at worst, which `check -r leaks` repairs, and COPIED flags of the
/// harmless kinds, see ``expectConsistent(_:_:completed:context:)``), and
/// the image holds the
/// state before the operation or the state after it: the snapshot there
/// with its data or not there at all, the active disk as before or as the
/// applied snapshot, the other snapshot's data intact (read by
/// `qemu-img convert -l` and compared with `qemu-img compare`). The
/// write-log replay of every crash point is ``Qcow2SnapshotCrashTests``.
@Suite(
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"),
  .requires("qemu-img", "qemu-io"),
  .timeLimit(.minutes(10)))
struct Qcow2SnapshotKillTests {
  enum Operation: String, Sendable, CaseIterable {
    case create = "-c"
    case apply = "-a"
    case delete = "-d"

    /// The seed of the kill times.
    var seed: UInt64 {
      switch self {
      case .create: 0x5A17_0001
      case .apply: 0x5A17_0002
      case .delete: 0x5A17_0003
      }
    }
  }

  @Test(arguments: Operation.allCases)
  func killedSnapshotOperationLeavesBeforeOrAfter(_ operation: Operation) async throws {
    let fixture = try ImageFixture()
    // The image: snapshot "base" of 8 MiB of ones, the first 4 MiB then
    // overwritten with twos.
    let image = fixture.path("image.qcow2")
    try await qemuImg(["create", "-q", "-f", "qcow2", "-o", "cluster_size=512", image, "8M"])
    try await DifferentialBitmapTests.io("write -P 1 0 8M", image)
    try await qemuImg(["snapshot", "-c", "base", image])
    try await DifferentialBitmapTests.io("write -P 2 0 4M", image)
    let active = fixture.path("active.raw")
    let base = fixture.path("base.raw")
    try await qemuImg(["convert", "-O", "raw", image, active])
    try await qemuImg(["convert", "-l", "base", "-O", "raw", image, base])

    /// Whether the image's snapshot `name` (nil: the active disk) reads
    /// as `reference`.
    func reads(_ path: String, _ name: String?, as reference: String) async throws -> Bool {
      var source = path
      if let name {
        source = fixture.path("snapshot.raw")
        try? FileManager.default.removeItem(atPath: source)
        try await qemuImg(["convert", "-l", name, "-O", "raw", path, source])
      }
      let compare = try await runProcess(
        "qemu-img", ["compare", "-q", "-F", "raw", source, reference])
      return compare.status == 0
    }

    var random = KillTestRandom(state: operation.seed)
    var runMicroseconds: UInt32 = 0
    var killedRuns = 0
    var done = 0
    // Seven runs, and more (up to 14) while none was killed: a run can be
    // faster than the first, unkilled one whose time bounds the delays (a
    // cold start), so delays are bounded by the fastest unkilled run.
    var iteration = 0
    while iteration < 7 || (killedRuns == 0 && iteration < 14) {
      defer { iteration += 1 }
      let path = try fixture.copy(image, to: "kill-\(iteration).qcow2")
      let name = operation == .create ? "new" : "base"
      let delay =
        iteration == 0 ? nil : UInt32.random(in: 0..<max(1, runMicroseconds), using: &random)
      let started = DispatchTime.now().uptimeNanoseconds
      let (output, killed) = try await runAndKill(
        SpindleExecutable.path!, ["img", "snapshot", operation.rawValue, name, path],
        afterMicroseconds: delay)
      if iteration == 0 {
        #expect(!killed && output.isEmpty, "the unkilled run: \(output)")
      }
      if !killed {
        let elapsed = UInt32(
          min(10_000_000, (DispatchTime.now().uptimeNanoseconds - started) / 1000))
        runMicroseconds = iteration == 0 ? elapsed : min(runMicroseconds, elapsed)
      }
      if killed { killedRuns += 1 }
      let context = "\(operation), iteration \(iteration), kill after \(delay ?? 0) µs"

      let check = try await runUnlocked(QEMU.qemuImg!, ["check", path])
      let list = try await runProcess("qemu-img", ["snapshot", "-l", path])
      let names = list.output.split(separator: "\n").dropFirst(2).compactMap {
        $0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first
      }
      var completed = false
      switch operation {
      case .create:
        #expect(names == ["base"] || names == ["base", "new"], "\(context): \(list)")
        if names.contains("new") {
          completed = true
          #expect(try await reads(path, "new", as: active), "\(context): snapshot data")
        }
        #expect(try await reads(path, nil, as: active), "\(context): active disk")
        #expect(try await reads(path, "base", as: base), "\(context): base")
      case .apply:
        #expect(names == ["base"], "\(context): \(list)")
        let applied = try await reads(path, nil, as: base)
        let before = try await reads(path, nil, as: active)
        #expect(applied || before, "\(context): active disk neither before nor after")
        completed = applied
        #expect(try await reads(path, "base", as: base), "\(context): base")
      case .delete:
        #expect(names == ["base"] || names.isEmpty, "\(context): \(list)")
        if names.isEmpty {
          completed = true
        } else {
          #expect(try await reads(path, "base", as: base), "\(context): base")
        }
        #expect(try await reads(path, nil, as: active), "\(context): active disk")
      }
      if completed { done += 1 }
      try await expectConsistent(path, check, completed: completed, context: context)
    }
    // The unkilled run completed the operation; some runs died.
    #expect(done > 0)
    #expect(killedRuns > 0)
  }

  /// The `qemu-img check` of a killed run: clean or leaks only (0 or 3),
  /// repaired by `check -r leaks`; or COPIED flags that disagree with
  /// refcounts the kill left half-updated (a flag and a refcount live in
  /// different clusters; QEMU's own snapshot code leaves the same), of the
  /// harmless kinds only: a flag missing (the next write copies the
  /// cluster once more), or a flag set where the refcount is higher only
  /// by a reference the kill leaked, that is when the operation did not
  /// complete. Such an image checks clean once `check -r all` repaired it.
  private func expectConsistent(
    _ path: String, _ check: ToolResult, completed: Bool, context: String
  ) async throws {
    guard check.status == 2 else {
      #expect(check.status == 0 || check.status == 3, "\(context): \(check)")
      let repair = try await runProcess(QEMU.qemuImg!, ["check", "-r", "leaks", path])
      #expect(repair.status == 0, "\(context): \(repair)")
      return
    }
    let errors = check.error.split(separator: "\n").filter { $0.hasPrefix("ERROR") }
    #expect(!errors.isEmpty, "\(context): \(check)")
    for line in errors {
      guard line.hasPrefix("ERROR OFLAG_COPIED"),
        let entry = line.split(separator: " ").first(where: { $0.contains("_entry=") }),
        let value = UInt64(entry.split(separator: "=")[1], radix: 16)
      else {
        Issue.record("\(context): \(check)")
        return
      }
      let flagSet = value & (1 << 63) != 0
      #expect(!flagSet || !completed, "\(context): a shared cluster is writable: \(line)")
    }
    _ = try await runProcess(QEMU.qemuImg!, ["check", "-r", "all", path])
    let repaired = try await runProcess(QEMU.qemuImg!, ["check", path])
    #expect(repaired.status == 0, "\(context), repaired: \(repaired)")
  }
}
