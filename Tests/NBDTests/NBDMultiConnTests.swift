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
/// one in-process server over a recording export.
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

  /// An in-process server (several clients at once, so CAN_MULTI_CONN) over
  /// a recording node, on a Unix socket in a fresh folder.
  @BlockActor
  final class Fixture {
    let directory: URL
    let socket: String
    let recording = RecordingDriver(size: 1 << 20)
    private let server = NBDServer(persistent: true, shared: 0, handshakeLimit: nil) { _ in }
    private var task: Task<Void, Never>?

    init() async throws {
      directory = FileManager.default.temporaryDirectory.appendingPathComponent(
        "nbdmulti-\(UUID().uuidString)")
      try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
      socket = directory.appendingPathComponent("s.sock").path
      let node = BlockNode(name: "rec", driver: recording)
      try await node.open()
      try await server.listen(on: .unix(path: socket))
      let export = NBDExportInfo(size: 1 << 20, multiConn: true)
      task = Task { [server] in
        await server.run(backend: BlockBackend(root: node), export: export)
      }
    }

    func open() async throws -> BlockNode {
      try await ImageOpener.open(
        filename: "nbd+unix:///?socket=\(socket)", format: "nbd", context: OpenContext())
    }

    func stop() async {
      server.shutdown()
      await task?.value
      try? FileManager.default.removeItem(at: directory)
    }
  }
}
