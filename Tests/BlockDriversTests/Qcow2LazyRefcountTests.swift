import BlockCore
import BlockTestSupport
import Foundation
import Testing

@testable import BlockDrivers

/// Lazy refcounts (`lazy_refcounts=on`): the image is marked dirty before
/// the first allocation that skips the refcount flush, marked clean when it
/// is closed, and a crash leaves a dirty image that a repair makes clean with
/// every flushed write intact.
@Suite(
  "qcow2 lazy refcounts",
  .requires("qemu-img", "qemu-io"))
@BlockActor
struct Qcow2LazyRefcountTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  /// The incompatible feature bits of the image's header.
  private func incompatibleFeatures(_ bytes: [UInt8]) throws -> UInt64 {
    try Qcow2Header.parse(bytes, fileLength: Int64(bytes.count)).incompatibleFeatures
  }

  @Test("an allocating write marks the image dirty; closing marks it clean")
  func dirtyWhileOpen() async throws {
    var options = Qcow2CreateOptions(size: 4 << 20)
    options.lazyRefcounts = true
    let disk = WriteLogDriver(try Qcow2Create.layout(options))
    let file = BlockNode(name: "write-log", driver: disk)
    try await file.open()
    let node = try await Qcow2Driver.open(over: file, imagePath: nil, context: OpenContext())
    #expect(try incompatibleFeatures(disk.current) & Qcow2Feature.dirty == 0)
    try await node.write(at: 0, bytes: [UInt8](repeating: 7, count: 4096))
    #expect(try incompatibleFeatures(disk.current) & Qcow2Feature.dirty != 0)
    await node.close()
    #expect(try incompatibleFeatures(disk.current) & Qcow2Feature.dirty == 0)
    let path = scratch.file("closed.qcow2")
    try Data(disk.current).write(to: URL(fileURLWithPath: path))
    let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", path])
    #expect(check.status == 0, "\(check.output)")
  }

  /// `cache-clean-interval` dropped every cached refcount block, deferred
  /// updates included: the image closed "clean" with refcounts missing.
  @Test("cleaning the caches keeps refcount blocks whose lazy updates are not written yet")
  func cleaningKeepsDeferredBlocks() async throws {
    var options = Qcow2CreateOptions(size: 4 << 20)
    options.lazyRefcounts = true
    let disk = WriteLogDriver(try Qcow2Create.layout(options))
    let file = BlockNode(name: "write-log", driver: disk)
    try await file.open()
    let node = try await Qcow2Driver.open(over: file, imagePath: nil, context: OpenContext())
    let driver = try #require(node.driver as? Qcow2Driver)
    try await node.write(at: 0, bytes: [UInt8](repeating: 7, count: 65536))
    #expect(driver.refcounts?.deferredBlocks.isEmpty == false)
    driver.cleanCaches(unusedSince: .max)
    await node.close()
    #expect(try incompatibleFeatures(disk.current) & Qcow2Feature.dirty == 0)
    let path = scratch.file("cleaned.qcow2")
    try Data(disk.current).write(to: URL(fileURLWithPath: path))
    let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", path])
    #expect(check.status == 0, "\(check.output)")
  }

  @Test("without the feature, or with lazy-refcounts=off, the image never becomes dirty")
  func notLazy() async throws {
    for (lazyImage, option) in [(false, nil), (true, "off")] as [(Bool, String?)] {
      var options = Qcow2CreateOptions(size: 4 << 20)
      options.lazyRefcounts = lazyImage
      let disk = WriteLogDriver(try Qcow2Create.layout(options))
      let file = BlockNode(name: "write-log", driver: disk)
      try await file.open()
      let node = try await Qcow2Driver.open(over: file, imagePath: nil, context: OpenContext())
      if let option {
        var runtime = DriverOptions()
        runtime["lazy-refcounts"] = option
        try (node.driver as? Qcow2Driver)?.apply(
          try Qcow2OpenOptions.take(from: &runtime), discardUnmap: false)
      }
      for op in GuestOp.mixed {
        try await op.apply(to: node)
        #expect(try incompatibleFeatures(disk.current) & Qcow2Feature.dirty == 0, "\(op)")
      }
      await node.close()
    }
  }

  @Test("a crash leaves a dirty image that check -r all repairs, flushed writes intact")
  func crashes() async throws {
    var options = Qcow2CreateOptions(size: 4 << 20)
    options.lazyRefcounts = true
    options.clusterSize = 4096
    let disk = WriteLogDriver(try Qcow2Create.layout(options))
    let file = BlockNode(name: "write-log", driver: disk)
    try await file.open()
    let node = try await Qcow2Driver.open(
      over: file, imagePath: nil, context: OpenContext(node: NodeOptions(discard: .unmap)))
    // Each write is followed by a flush: what a guest flush made durable.
    let writes: [(Int64, Int, UInt8)] = [
      (0, 4096, 1), (100_000, 20_000, 2), (1 << 20, 65536, 3), (2 << 20, 8192, 4),
      (3 << 20, 4096, 5), (50_000, 100, 6),
    ]
    var flushed: [Int] = []
    for (offset, count, byte) in writes {
      try await node.write(at: offset, bytes: [UInt8](repeating: byte, count: count))
      try await node.flush()
      flushed.append(disk.flushCount)
    }
    let path = scratch.file("crashed.qcow2")
    for (index, flush) in flushed.enumerated() {
      // The crash keeps every write of the earlier windows and half of the
      // writes of the next one.
      let image = disk.image(afterFlush: flush, keeping: { $0 % 2 == 0 })
      try Data(image).write(to: URL(fileURLWithPath: path))
      let repair = try await QEMUTools.run(QEMUTools.qemuImg, ["check", "-r", "all", path])
      #expect(repair.status == 0, "after write \(index): \(repair.output)")
      let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", path])
      #expect(check.status == 0, "after write \(index): \(check.output)")
      for (offset, count, byte) in writes[...index] {
        let read = try await QEMUTools.run(
          QEMUTools.qemuIO, ["-c", "read -P \(byte) \(offset) \(count)", path])
        #expect(!read.output.contains("Pattern verification failed"), "write \(byte) lost")
      }
    }
    await node.close()
  }
}
