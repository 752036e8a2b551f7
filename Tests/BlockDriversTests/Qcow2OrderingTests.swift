import BlockCore
import BlockTestSupport
import Testing

@testable import BlockDrivers

/// The order in which metadata reaches the file: QEMU's cache dependencies
/// make every crash leave at worst leaked clusters, never an L2 entry
/// pointing at a cluster whose refcount is not on disk, nor an L1 entry
/// pointing at an unwritten L2 table, nor a freed cluster still referenced.
@Suite("qcow2 metadata ordering")
@BlockActor
struct Qcow2OrderingTests {
  /// A writable qcow2 node (64 KiB clusters, 1 MiB unless `size` says
  /// otherwise) over a recording driver.
  func makeImage(size: Int64 = 1 << 20) async throws -> (BlockNode, RecordingDriver) {
    let image = try Qcow2Create.layout(Qcow2CreateOptions(size: size))
    let recorder = RecordingDriver(size: 1 << 20)
    let file = BlockNode(name: "recorded", driver: recorder)
    try await file.open()
    try await file.write(at: 0, bytes: image)
    let node = try await Qcow2Driver.open(
      over: file, imagePath: nil, context: OpenContext(node: NodeOptions(discard: .unmap)))
    recorder.reset()
    return (node, recorder)
  }

  /// Writes and flushes (consecutive flush calls as one "flush").
  func writesAndFlushes(_ recorder: RecordingDriver) -> [String] {
    var result: [String] = []
    for call in recorder.calls {
      switch call {
      case .write(let offset, let length, _):
        result.append("write 0x\(String(offset, radix: 16)) \(length)")
      case .flushToOS, .flushToDisk:
        if result.last != "flush" { result.append("flush") }
      default: break
      }
    }
    return result
  }

  @Test(
    "an allocating write: refcount, L2 table, L1 entry with flushes between, then only the data; a flush writes the refcount block, flushes, then the L2 table"
  )
  func allocatingWrite() async throws {
    let (node, recorder) = try await makeImage()
    try await node.write(at: 0, bytes: [UInt8](repeating: 7, count: 4096))
    #expect(
      writesAndFlushes(recorder) == [
        "write 0x20008 2", "flush",  // refcount of the L2 table (cluster 4)
        "write 0x40000 65536", "flush",  // the zeroed L2 table
        "write 0x30000 8", "flush",  // the L1 entry
        "write 0x50000 65536",  // data with its copy-on-write tail
      ])
    #expect(try await node.read(at: 0, count: 4097) == [UInt8](repeating: 7, count: 4096) + [0])
    recorder.reset()
    try await node.flush()
    #expect(
      writesAndFlushes(recorder) == [
        "write 0x20000 65536", "flush",  // the refcount block (cluster 5 counted)
        "write 0x40000 65536", "flush",  // the L2 table with the new entry
      ])
    await node.close()
  }

  @Test("allocating writes share the flush that orders their metadata")
  func allocationsShareAFlush() async throws {
    let (node, recorder) = try await makeImage()
    try await node.write(at: 0, bytes: [UInt8](repeating: 1, count: 65536))
    recorder.reset()
    for cluster in 1...3 {
      try await node.write(
        at: Int64(cluster) << 16, bytes: [UInt8](repeating: UInt8(cluster + 1), count: 65536))
    }
    #expect(
      writesAndFlushes(recorder) == [
        "write 0x60000 65536", "write 0x70000 65536", "write 0x80000 65536",
      ])
    recorder.reset()
    await node.close()
    #expect(
      writesAndFlushes(recorder) == [
        "write 0x20000 65536", "flush", "write 0x40000 65536", "flush",
      ])
  }

  @Test(
    "a discard: the refcounts the cached entries need, flush, the L2 entry and table, flush, then the refcount; the freed cluster is reused"
  )
  func discardThenReuse() async throws {
    let (node, recorder) = try await makeImage()
    try await node.write(at: 0, bytes: [UInt8](repeating: 7, count: 65536))
    recorder.reset()
    try await node.discard(at: 0, count: 65536)
    #expect(
      writesAndFlushes(recorder) == [
        "write 0x20000 65536", "flush", "write 0x40000 8", "write 0x40000 65536", "flush",
        "write 0x2000a 2",
      ])
    recorder.reset()
    try await node.write(at: 131072, bytes: [UInt8](repeating: 8, count: 65536))
    #expect(writesAndFlushes(recorder) == ["write 0x50000 65536"])
    recorder.reset()
    try await node.flush()
    #expect(
      writesAndFlushes(recorder) == [
        "write 0x20000 65536", "flush", "write 0x40000 65536", "flush",
      ])
    #expect(try await node.read(at: 0, count: 65536) == [UInt8](repeating: 0, count: 65536))
    await node.close()
  }

  @Test(
    "an L2 entry written through that keeps a cluster counted only in the cache waits for its refcount block"
  )
  func zeroOverCachedAllocation() async throws {
    let (node, recorder) = try await makeImage()
    try await node.write(at: 0, bytes: [UInt8](repeating: 7, count: 65536))
    recorder.reset()
    // Without unmap the zero flag keeps cluster 5 allocated.
    try await node.writeZeroes(at: 0, count: 65536)
    #expect(
      writesAndFlushes(recorder) == ["write 0x20000 65536", "flush", "write 0x40000 8"])
    #expect(try await node.read(at: 0, count: 65536) == [UInt8](repeating: 0, count: 65536))
    await node.close()
  }

  @Test("dirty L2 tables never fill the cache: the last one to fill it writes them back")
  func writeBackWhenCacheFills() async throws {
    let (node, recorder) = try await makeImage(size: 2 << 30)
    let driver = try #require(node.driver as? Qcow2Driver)
    driver.l2Cache = Qcow2L2Cache(capacity: 2)
    try await node.write(at: 0, bytes: [UInt8](repeating: 1, count: 512))
    #expect(driver.l2Cache.dirtyOffsets == [0x40000])
    recorder.reset()
    try await node.write(at: 512 << 20, bytes: [UInt8](repeating: 2, count: 512))
    #expect(
      writesAndFlushes(recorder) == [
        "write 0x2000c 2",  // refcount of the second L2 table (cluster 6)
        "write 0x20000 65536", "flush",  // the refcount cache flushed before a new table
        "write 0x60000 65536", "flush", "write 0x30008 8", "flush",  // the table, its L1 entry
        "write 0x70000 65536",  // the data
        "write 0x20000 65536", "flush",  // the refcounts both tables' entries need
        "write 0x40000 65536", "write 0x60000 65536",  // both tables written back
      ])
    #expect(driver.l2Cache.dirtyOffsets.isEmpty)
    await node.close()
  }

  @Test("an in-place write to a COPIED cluster touches no metadata")
  func inPlace() async throws {
    let (node, recorder) = try await makeImage()
    try await node.write(at: 0, bytes: [UInt8](repeating: 7, count: 65536))
    recorder.reset()
    try await node.write(at: 100, bytes: [1, 2, 3])
    #expect(writesAndFlushes(recorder) == ["write 0x50064 3"])
    await node.close()
  }
}
