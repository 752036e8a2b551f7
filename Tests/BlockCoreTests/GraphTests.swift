import BlockCore
import BlockTestSupport
import Testing

@Suite("Graph: children, limits, parents")
@BlockActor
struct GraphTests {
  @Test("a node merges its file child's limits, then its driver overrides them")
  func limitsFromChildren() async throws {
    var childLimits = BlockLimits()
    childLimits.maxTransfer = 65536
    childLimits.optTransfer = 8192
    let (child, _) = try await makeRecordingNode(size: 1 << 20, limits: childLimits, name: "file")
    var parentLimits = BlockLimits()
    parentLimits.requestAlignment = 4096
    let driver = RecordingDriver(size: 1 << 20, limits: parentLimits)
    let parent = BlockNode(name: "format", driver: driver)
    parent.attach(child, role: .file)
    try await parent.open()
    #expect(parent.limits.maxTransfer == 65536)  // from the child
    #expect(parent.limits.optTransfer == 8192)  // from the child
    #expect(parent.limits.requestAlignment == 4096)  // the driver's own
    #expect(parent.limits.minMemAlignment == child.limits.minMemAlignment)
    #expect(parent.file === child)
    #expect(parent.children.first?.writable == true)
  }

  @Test("a sector driver gets 512-byte alignment by default; byte drivers 1")
  func defaultAlignment() async throws {
    var sector = DriverCapabilities(kind: .protocolDriver)
    sector.byteGranular = false
    let (node, _) = try await makeRecordingNode(size: 4096, capabilities: sector)
    #expect(node.limits.requestAlignment == 512)
    let (byteNode, _) = try await makeRecordingNode(size: 4096)
    #expect(byteNode.limits.requestAlignment == 1)
  }

  @Test("a backing child is never written through; flush does not reach it")
  func backingNotWritable() async throws {
    let (base, baseDriver) = try await makeRecordingNode(size: 4096, name: "base")
    let (top, topDriver) = try await makeRecordingNode(size: 4096, backing: base, name: "top")
    #expect(top.children.first?.role == .backing && top.children.first?.writable == false)
    try await top.write(at: 0, bytes: [1])
    try await top.flush()
    #expect(topDriver.ioCalls.contains(.flushToDisk))
    #expect(baseDriver.ioCalls.isEmpty)
  }
}
