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
  /// A writable qcow2 node (64 KiB clusters, 1 MiB) over a recording driver.
  func makeImage() async throws -> (BlockNode, RecordingDriver) {
    let image = try Qcow2Create.layout(Qcow2CreateOptions(size: 1 << 20))
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
    "an allocating write: refcount, L2 table, L1 entry, data, L2 entry, with flushes between; the data cluster's refcount and data share one"
  )
  func allocatingWrite() async throws {
    let (node, recorder) = try await makeImage()
    try await node.write(at: 0, bytes: [UInt8](repeating: 7, count: 4096))
    #expect(
      writesAndFlushes(recorder) == [
        "write 0x20008 2", "flush",  // refcount of the L2 table (cluster 4)
        "write 0x40000 65536", "flush",  // the zeroed L2 table
        "write 0x30000 8", "flush",  // the L1 entry
        "write 0x2000a 2",  // refcount of the data cluster (cluster 5)
        "write 0x50000 65536", "flush",  // data with its copy-on-write tail
        "write 0x40000 8",  // the L2 entry
      ])
    #expect(try await node.read(at: 0, count: 4097) == [UInt8](repeating: 7, count: 4096) + [0])
    await node.close()
  }

  @Test("a discard: the L2 entry, flush, then the refcount; the freed cluster is reused")
  func discardThenReuse() async throws {
    let (node, recorder) = try await makeImage()
    try await node.write(at: 0, bytes: [UInt8](repeating: 7, count: 65536))
    recorder.reset()
    try await node.discard(at: 0, count: 65536)
    #expect(writesAndFlushes(recorder) == ["write 0x40000 8", "flush", "write 0x2000a 2"])
    recorder.reset()
    try await node.write(at: 131072, bytes: [UInt8](repeating: 8, count: 65536))
    #expect(
      writesAndFlushes(recorder) == [
        "write 0x2000a 2", "write 0x50000 65536", "flush", "write 0x40010 8",
      ])
    #expect(try await node.read(at: 0, count: 65536) == [UInt8](repeating: 0, count: 65536))
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
