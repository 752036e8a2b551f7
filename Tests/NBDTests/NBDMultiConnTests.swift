import BlockCore
import BlockDrivers
import BlockTestSupport
import Foundation
import Testing

@testable import NBD

/// Multi-conn as the NBD spec asks of a server that advertises
/// CAN_MULTI_CONN: every connection reaches the same node, so a FLUSH on
/// one connection makes durable what another connection's replies had
/// acknowledged, and a FUA write is durable before its reply whichever
/// connection then reads it. Two of Spindle's client connections against
/// one in-process server over a recording export; and Spindle's client
/// with `x-multi-conn`, which opens several connections only to a server
/// that advertises CAN_MULTI_CONN.
@BlockActor
struct NBDMultiConnTests {
  init() { NBDClient.register() }

  @Test func flushOnOneConnectionCoversWritesOfAnother() async throws {
    let fixture = try await Fixture()
    let first = try await fixture.open()
    let second = try await fixture.open()
    for node in [first, second] {
      let driver = try #require(node.driver as? NBDClientDriver)
      #expect(driver.export.flags.contains(.canMultiConn))
    }
    fixture.recording.reset()
    try await first.write(at: 0, bytes: [UInt8](repeating: 0x11, count: 4096))
    try await first.write(at: 65536, bytes: [UInt8](repeating: 0x22, count: 4096))
    let writes = fixture.recording.calls.filter {
      if case .write = $0 { true } else { false }
    }
    #expect(writes.count == 2)
    #expect(!fixture.recording.calls.contains(.flushToDisk))
    try await second.flush()
    // The flush reached the node after both writes, before its reply.
    let calls = fixture.recording.calls
    let lastWrite = try #require(calls.lastIndex { if case .write = $0 { true } else { false } })
    let flush = try #require(calls.lastIndex(of: .flushToDisk))
    #expect(lastWrite < flush)
    #expect(
      try await second.read(at: 65536, count: 4096) == [UInt8](repeating: 0x22, count: 4096))
    await first.close()
    await second.close()
    await fixture.stop()
  }

  @Test func fuaWriteIsDurableBeforeItsReply() async throws {
    let fixture = try await Fixture()
    let first = try await fixture.open()
    let second = try await fixture.open()
    fixture.recording.reset()
    try await first.write(at: 8192, bytes: [UInt8](repeating: 0x33, count: 4096), flags: .fua)
    // Durable: a write with FUA, or the write and then a flush.
    let calls = fixture.recording.calls
    let write = try #require(calls.firstIndex { if case .write = $0 { true } else { false } })
    let nativeFUA =
      if case .write(_, _, let flags) = calls[write] { flags.contains(.fua) } else { false }
    #expect(nativeFUA || calls[(write + 1)...].contains(.flushToDisk), "\(calls)")
    #expect(
      try await second.read(at: 8192, count: 4096) == [UInt8](repeating: 0x33, count: 4096))
    await first.close()
    await second.close()
    await fixture.stop()
  }

  @Test func clientSpreadsRequestsOverSeveralConnections() async throws {
    let fixture = try await Fixture()
    let node = try await fixture.open(multiConn: 4)
    let driver = try #require(node.driver as? NBDClientDriver)
    #expect(driver.connectionCount == 4)
    let writes = (0..<64).map { index in
      Task { @BlockActor in
        try await node.write(
          at: Int64(index) * 4096, bytes: [UInt8](repeating: UInt8(index + 1), count: 4096))
      }
    }
    for write in writes { try await write.value }
    try await node.flush()
    #expect(fixture.recording.calls.contains(.flushToDisk))
    let reads = (0..<64).map { index in
      Task { @BlockActor in try await node.read(at: Int64(index) * 4096, count: 4096) }
    }
    for (index, read) in reads.enumerated() {
      #expect(try await read.value == [UInt8](repeating: UInt8(index + 1), count: 4096))
    }
    await node.close()
    await fixture.stop()
  }

  @Test func clientOpensOneConnectionWithoutCanMultiConn() async throws {
    let fixture = try await Fixture(multiConn: false)
    let node = try await fixture.open(multiConn: 4)
    let driver = try #require(node.driver as? NBDClientDriver)
    #expect(driver.connectionCount == 1)
    await node.close()
    await fixture.stop()
  }

  /// An in-process server (several clients at once, so CAN_MULTI_CONN) over
  /// a recording node.
  @BlockActor
  final class Fixture {
    let recording = RecordingDriver(size: 1 << 20)
    private let server: InProcessNBDServer

    init(multiConn: Bool = true) async throws {
      let node = BlockNode(name: "rec", driver: recording)
      try await node.open()
      server = try await InProcessNBDServer(
        in: InProcessNBDServer.folder("nbdmulti"), node: node,
        export: NBDExportInfo(size: 1 << 20, multiConn: multiConn))
    }

    func open(multiConn: Int = 1) async throws -> BlockNode {
      var options = DriverOptions()
      if multiConn > 1 { options["x-multi-conn"] = "\(multiConn)" }
      return try await server.open(options)
    }

    func stop() async { await server.stop() }
  }
}
