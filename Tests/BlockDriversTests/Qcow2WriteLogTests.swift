import BlockCore
import BlockTestSupport
import Foundation
import Testing

@testable import BlockDrivers

/// Replays the file-level write log of qcow2 workloads (``WriteLogDriver``
/// under the qcow2 node): for sampled flush points, the image a crash could
/// leave — every write before the flush plus a subset of those after it
/// (none, all, random ones) — must have no corruption (`qemu-img check`:
/// leaks allowed) and hold every guest write that a guest flush made
/// durable. This is what proves the ordering of metadata writes and flushes.
@Suite(
  "qcow2 write-log replay", .requires("qemu-img"),
  .timeLimit(.minutes(10)))
@BlockActor
struct Qcow2WriteLogTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  @Test(
    "crashes at any flush keep flushed writes and leave at worst leaks",
    arguments: WriteLogWorkload.all)
  func replay(_ workload: WriteLogWorkload) async throws {
    var options = Qcow2CreateOptions(size: workload.size)
    options.clusterSize = workload.clusterSize
    options.refcountBits = workload.refcountBits
    let disk = WriteLogDriver(try Qcow2Create.layout(options))
    let file = BlockNode(name: "write-log", driver: disk)
    try await file.open()
    let node = try await Qcow2Driver.open(
      over: file, imagePath: nil, context: OpenContext(node: NodeOptions(discard: .unmap)))
    // For each op: where its requests start in the log, and how many
    // flushes had completed once the guest flush after it returned.
    var logStart: [Int] = []
    var durableAfter: [Int] = []
    for op in workload.ops {
      logStart.append(disk.log.count)
      try await op.apply(to: node, clusterSize: workload.clusterSize)
      try await node.flush()
      durableAfter.append(disk.flushCount)
    }
    await node.close()

    var random = KillTestSeed(state: UInt64(workload.clusterSize) &* 0x9E37_79B9)
    let flushes = disk.flushCount
    // qemu-img check runs on a sample of the crash images (it takes a
    // process each); the in-process reference check on all of them.
    var sampled = Set(
      (0..<min(6, flushes + 1)).map { _ in Int.random(in: 0...flushes, using: &random) })
    sampled.insert(flushes)
    var durableBytes = disk.initial
    var crashImages = 0
    for flush in 0...flushes {
      let window = disk.window(afterFlush: flush)
      // Long workloads (hundreds of flushes, mostly the same steps again)
      // are sampled, about 50 crash points each, to keep the suite fast.
      guard
        flushes <= 50 || sampled.contains(flush) || Int.random(in: 0..<flushes, using: &random) < 50
      else {
        disk.applyWindow(afterFlush: flush, to: &durableBytes) { _ in true }
        continue
      }
      let seed = random.next()
      var subsets: [(String, Bool, (Int) -> Bool)] = [
        ("none", true, { _ in false }), ("all", true, { _ in true }),
        (
          "random \(seed)", true, { ($0 &* 2_654_435_761 ^ Int(truncatingIfNeeded: seed)) & 4 != 0 }
        ),
      ]
      // Every write alone, and every write but one: a later metadata write
      // reaching the disk without an earlier one it depends on.
      for position in 0..<min(window.count, 48) where window.count > 1 {
        subsets.append(("only entry \(position)", false, { $0 == position }))
        subsets.append(("all but entry \(position)", false, { $0 != position }))
      }
      // Ops made durable by a completed guest flush, and ops that may have
      // been in progress (their requests began before the window ended).
      let durable = durableAfter.prefix { $0 <= flush }.count
      let started = logStart.prefix { $0 < window.upperBound }.count
      for (name, checkData, keep) in subsets {
        var bytes = durableBytes
        disk.applyWindow(afterFlush: flush, to: &bytes, keeping: keep)
        crashImages += 1
        let context = "\(workload.name), crash after flush \(flush) of \(flushes), keeping \(name)"
        let references = Qcow2ReferenceCheck(bytes)
        #expect(references.corruptions.isEmpty, "\(context): \(references.corruptions.prefix(5))")
        guard sampled.contains(flush) && checkData else { continue }
        do {
          let path = scratch.file("replay.qcow2")
          try Data(bytes).write(to: URL(fileURLWithPath: path))
          let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", path])
          // 0: clean, 3: leaked clusters only; 2 would be corruption.
          #expect(check.status == 0 || check.status == 3, "\(context): \(check.output)")
          try await expectDurable(
            bytes, workload: workload, durable: durable, uncertain: durable..<max(durable, started),
            context: context)
        }
      }
      disk.applyWindow(afterFlush: flush, to: &durableBytes) { _ in true }
    }
    #expect(flushes > workload.ops.count, "the workload flushed its metadata steps")
    #expect(crashImages > 3 * min(flushes, 50))
  }

  /// Reads the replayed image through Spindle and compares the bytes the
  /// first `durable` ops wrote, except where an op in `uncertain` may have
  /// changed them.
  func expectDurable(
    _ image: [UInt8], workload: WriteLogWorkload, durable: Int, uncertain: Range<Int>,
    context: String
  ) async throws {
    // Foundation's Data compares and fills with memcmp and memset: per-byte
    // loops would dominate the test in debug builds.
    var expected = Data(count: Int(workload.maxSize))
    for op in workload.ops.prefix(durable) {
      if let (range, byte) = op.effect(clusterSize: workload.clusterSize) {
        expected.replaceSubrange(range, with: Data(repeating: byte, count: range.count))
      }
    }
    var unchecked = workload.ops[uncertain].compactMap {
      $0.effect(clusterSize: workload.clusterSize)?.range
    }
    unchecked.sort { $0.lowerBound < $1.lowerBound }
    let file = BlockNode(
      name: "replayed", driver: WriteLogDriver(image), options: NodeOptions(readOnly: true))
    try await file.open()
    let node = try await Qcow2Driver.open(
      over: file, imagePath: nil, context: OpenContext(node: NodeOptions(readOnly: true)))
    defer { Task { await node.close() } }
    let length = Int(min(node.length, workload.maxSize))
    let actual = Data(try await node.read(at: 0, count: length))
    // The ranges between the unchecked ones.
    var checked: [Range<Int>] = []
    var position = 0
    for range in unchecked {
      if range.lowerBound > position { checked.append(position..<min(range.lowerBound, length)) }
      position = max(position, range.upperBound)
    }
    if position < length { checked.append(position..<length) }
    for range in checked where !range.isEmpty && actual[range] != expected[range] {
      Issue.record("\(context): guest bytes \(range) differ from the flushed writes")
    }
  }
}

/// A deterministic pseudo-random generator (SplitMix64) for the replay's
/// choices, so that a failure reproduces.
struct KillTestSeed: RandomNumberGenerator {
  var state: UInt64
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}
