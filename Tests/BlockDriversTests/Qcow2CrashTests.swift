import BlockCore
import BlockTestSupport
import Foundation
import Testing

@testable import BlockDrivers

/// Crashes after every request, keeping various subsets of the writes not yet
/// flushed: `qemu-img check` must find at worst leaked clusters.
@Suite(
  "qcow2 crash consistency",
  .requires("qemu-img"))
@BlockActor
struct Qcow2CrashTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  @Test(
    "a crash at any point leaves at worst leaks",
    arguments: [(Int64(512), 16), (65536, 16), (512, 64)])
  func crashes(clusterSize: Int64, refcountBits: Int) async throws {
    var options = Qcow2CreateOptions(size: 4 << 20)
    options.clusterSize = clusterSize
    options.refcountBits = refcountBits
    let disk = WriteLogDriver(try Qcow2Create.layout(options))
    let file = BlockNode(name: "write-log", driver: disk)
    try await file.open()
    let node = try await Qcow2Driver.open(
      over: file, imagePath: nil, context: OpenContext(node: NodeOptions(discard: .unmap)))
    var random = SystemRandomNumberGenerator()
    let path = scratch.file("crashed.qcow2")
    // The last request outgrows a 512-byte cluster image's refcount table
    // when refcounts are 64 bits wide.
    let ops = GuestOp.mixed + [.write(1 << 20, 2 << 20, 0x5a)]
    for (step, op) in ops.enumerated() {
      try await op.apply(to: node)
      let seed = UInt64.random(in: 0...UInt64.max, using: &random)
      let survivors: [(String, (Int) -> Bool)] = [
        ("none", { _ in false }), ("all", { _ in true }), ("odd", { $0 % 2 == 1 }),
        ("random \(seed)", { ($0 &* 2_654_435_761 ^ Int(truncatingIfNeeded: seed)) & 4 != 0 }),
      ]
      for (name, keep) in survivors {
        try Data(disk.image(afterFlush: disk.flushCount, keeping: keep)).write(
          to: URL(fileURLWithPath: path))
        let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", path])
        // 0: clean, 3: leaked clusters only; 2 would be corruption.
        #expect(
          check.status == 0 || check.status == 3,
          "after step \(step) (\(op)), keeping \(name) of the unflushed writes: \(check.output)")
      }
    }
    if refcountBits == 64 {
      let header = try Qcow2Header.parse(disk.current, fileLength: Int64(disk.current.count))
      #expect(header.refcountTableOffset != UInt64(clusterSize), "the refcount table grew")
    }
  }
}
