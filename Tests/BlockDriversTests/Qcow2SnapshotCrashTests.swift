import BlockCore
import BlockTestSupport
import Foundation
import Testing

@testable import BlockDrivers

/// Replays the file-level write log of snapshot create, apply and delete
/// (``WriteLogDriver`` under the qcow2 node): at every flush of the
/// operation, the images a crash could leave (every write before the flush
/// plus none, all, random ones, each one alone and all but each one of the
/// writes after it) must be consistent for `qemu-img check` (leaks
/// allowed, and COPIED flags of the harmless kind, see
/// ``expectConsistent(_:crashedBefore:context:)``) and hold either the state before the operation or the state
/// after it: the same snapshots, each with its data, and the same active
/// disk.
@Suite("qcow2 snapshot write-log replay", .requires("qemu-img"), .timeLimit(.minutes(10)))
@BlockActor
struct Qcow2SnapshotCrashTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  /// The snapshot operation a scenario replays.
  enum Operation: String, Sendable, CaseIterable {
    case create, apply, delete
  }

  /// An image layout and an operation on it.
  struct Scenario: Sendable, CustomStringConvertible {
    var clusterSize: Int64
    var operation: Operation
    var description: String { "\(operation) with \(clusterSize)-byte clusters" }
  }

  nonisolated static let scenarios: [Scenario] = [512, 65536].flatMap { size in
    Operation.allCases.map { Scenario(clusterSize: size, operation: $0) }
  }

  /// What a reader sees in an image: snapshot names in table order, each
  /// snapshot's guest bytes and the active disk's.
  struct State: Equatable {
    var names: [String]
    var snapshots: [[UInt8]]
    var active: [UInt8]
  }

  @Test("a crash at any point leaves the snapshot fully there or not", arguments: scenarios)
  func replay(_ scenario: Scenario) async throws {
    let clusterSize = scenario.clusterSize
    let size: Int64 = clusterSize == 512 ? 256 << 10 : 4 << 20
    var options = Qcow2CreateOptions(size: size)
    options.clusterSize = clusterSize
    let disk = WriteLogDriver(try Qcow2Create.layout(options))
    let file = BlockNode(name: "write-log", driver: disk)
    try await file.open()
    let node = try await Qcow2Driver.open(
      over: file, imagePath: nil, context: OpenContext(node: NodeOptions(discard: .unmap)))
    let qcow2 = try #require(node.driver as? Qcow2Driver)
    // Data in several L2 tables, a compressed cluster, a snapshot, then
    // writes over part of the data (copied away from the snapshot).
    let span = Int(clusterSize == 512 ? 40_000 : 200_000)
    try await node.write(at: 0, bytes: [UInt8](repeating: 1, count: span))
    try await node.write(
      at: (Int64(span) / clusterSize + 2) * clusterSize,
      bytes: [UInt8](repeating: 3, count: Int(clusterSize)),
      flags: .writeCompressed)
    try await qcow2.createSnapshot(node, Qcow2SnapshotInfo(name: "base"))
    try await node.write(at: Int64(span / 2), bytes: [UInt8](repeating: 2, count: span))
    try await node.flush()
    let before = disk.current
    let start = disk.flushCount
    switch scenario.operation {
    case .create: try await qcow2.createSnapshot(node, Qcow2SnapshotInfo(name: "new"))
    case .apply: try await qcow2.applySnapshot(node, idOrName: "base")
    case .delete: try await qcow2.deleteSnapshot(node, id: nil, name: "base")
    }
    try await node.flush()
    await node.close()
    let after = disk.current
    let expected = [try await state(of: before), try await state(of: after)]
    #expect(expected[0] != expected[1], "the operation changed what a reader sees")

    var random = KillTestSeed(state: UInt64(clusterSize) &* 0x9E37_79B9 &+ UInt64(start))
    var crashImages = 0
    for flush in start...disk.flushCount {
      let window = disk.window(afterFlush: flush)
      let seed = random.next()
      var subsets: [(String, (Int) -> Bool)] = [
        ("none", { _ in false }), ("all", { _ in true }),
        ("random \(seed)", { ($0 &* 2_654_435_761 ^ Int(truncatingIfNeeded: seed)) & 4 != 0 }),
      ]
      for position in 0..<min(window.count, 16) where window.count > 1 {
        subsets.append(("only entry \(position)", { $0 == position }))
        subsets.append(("all but entry \(position)", { $0 != position }))
      }
      for (name, keep) in subsets {
        let bytes = disk.image(afterFlush: flush, keeping: keep)
        crashImages += 1
        let context =
          "\(scenario), crash after flush \(flush) of \(disk.flushCount), keeping \(name)"
        let path = scratch.file("crash.qcow2")
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let found = try await state(of: bytes)
        #expect(expected.contains(found), "\(context): neither before nor after: \(found.names)")
        try await expectConsistent(path, crashedBefore: found == expected[0], context: context)
      }
    }
    #expect(disk.flushCount > start + 2, "the operation flushed its steps")
    #expect(crashImages > 3 * (disk.flushCount - start))
  }

  /// `qemu-img check` of a crash image: clean or leaks only (0 or 3),
  /// except for COPIED flags that disagree with refcounts the crash left
  /// half-updated. Those are unavoidable (a flag and a refcount live in
  /// different clusters; QEMU's own snapshot code leaves the same) and
  /// harmless in one direction: a flag missing where the refcount is 1
  /// (the next write copies the cluster once more), or a flag set where the
  /// refcount is higher only because of a reference the crash leaked, that
  /// is when the new snapshot is not in the table (`crashedBefore`). Such
  /// an image must then check clean once `qemu-img check -r all` repaired
  /// the flags.
  func expectConsistent(_ path: String, crashedBefore: Bool, context: String) async throws {
    let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", path])
    guard check.status == 2 else {
      #expect(check.status == 0 || check.status == 3, "\(context): \(check.output)")
      return
    }
    let errors = check.output.split(separator: "\n").filter { $0.hasPrefix("ERROR") }
    for line in errors {
      guard line.hasPrefix("ERROR OFLAG_COPIED"),
        let entry = line.split(separator: " ").first(where: { $0.contains("_entry=") }),
        let value = UInt64(entry.split(separator: "=")[1], radix: 16)
      else {
        Issue.record("\(context): \(check.output)")
        return
      }
      let flagSet = value & (1 << 63) != 0
      #expect(!flagSet || crashedBefore, "\(context): a shared cluster is writable: \(line)")
    }
    _ = try await QEMUTools.run(QEMUTools.qemuImg, ["check", "-r", "all", path])
    let repaired = try await QEMUTools.run(QEMUTools.qemuImg, ["check", path])
    #expect(repaired.status == 0, "\(context), repaired: \(repaired.output)")
  }

  /// Reads the image `bytes` through Spindle: its snapshots and the active
  /// disk.
  func state(of bytes: [UInt8]) async throws -> State {
    func open() async throws -> (BlockNode, Qcow2Driver) {
      let file = BlockNode(
        name: "replayed", driver: WriteLogDriver(bytes), options: NodeOptions(readOnly: true))
      try await file.open()
      let node = try await Qcow2Driver.open(
        over: file, imagePath: nil, context: OpenContext(node: NodeOptions(readOnly: true)))
      return (node, try #require(node.driver as? Qcow2Driver))
    }
    let (node, qcow2) = try await open()
    let snapshots = try await qcow2.snapshots(node)
    let active = try await node.read(at: 0, count: Int(node.length))
    await node.close()
    var contents: [[UInt8]] = []
    for snapshot in snapshots {
      let (reader, driver) = try await open()
      try await driver.loadSnapshotReadOnly(reader, id: snapshot.id, name: nil)
      contents.append(try await reader.read(at: 0, count: Int(reader.length)))
      await reader.close()
    }
    return State(names: snapshots.map(\.name), snapshots: contents, active: active)
  }
}
