import BlockCore
import BlockDrivers
import Foundation
import Testing

@testable import NBD

/// The `nbd` client driver against Spindle's own server, both in this
/// process, over a Unix socket in a temporary folder: every request type
/// through the engine, many requests in flight on one connection, the
/// export's facts, and what happens when the server goes away.
@BlockActor
struct NBDClientTests {
  /// An in-process server for a memory node, on a Unix socket.
  @BlockActor
  final class Server {
    let directory: URL
    let socket: String
    let server: NBDServer
    let memory: MemoryDriver
    let backend: BlockBackend
    private var task: Task<Void, Never>?

    init(size: Int64 = 4 << 20, readOnly: Bool = false) async throws {
      directory = FileManager.default.temporaryDirectory.appendingPathComponent(
        "nbdclient-\(UUID().uuidString)")
      try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
      socket = directory.appendingPathComponent("s.sock").path
      memory = MemoryDriver(size: size)
      let node = BlockNode(name: "mem", driver: memory)
      try await node.open()
      backend = BlockBackend(root: node)
      // No handshake time limit: at the start of a test run every test
      // starts at once and this process's server can wait longer than the
      // default 10 s before its first turn (the limit has its own tests).
      server = NBDServer(persistent: true, shared: 0, handshakeLimit: nil, report: { _ in })
      try await server.listen(on: .unix(path: socket))
      let export = NBDExportInfo(size: UInt64(size), readOnly: readOnly, multiConn: true)
      task = Task { [server, backend] in await server.run(backend: backend, export: export) }
    }

    /// Stops serving and waits until the server has ended.
    func stop() async {
      server.shutdown()
      await task?.value
      task = nil
      try? FileManager.default.removeItem(at: directory)
    }
  }

  init() { NBDClient.register() }

  private func open(_ server: Server, readOnly: Bool = false) async throws -> BlockNode {
    var context = OpenContext()
    context.node.readOnly = readOnly
    return try await ImageOpener.open(
      filename: "nbd+unix:///?socket=\(server.socket)", format: "nbd", context: context)
  }

  @Test func exportFactsAndLimits() async throws {
    let server = try await Server(size: 3 << 20)
    let node = try await open(server)
    let driver = try #require(node.driver as? NBDClientDriver)
    #expect(node.length == 3 << 20)
    #expect(driver.export.structuredReplies)
    #expect(driver.export.contextID != nil)
    #expect(!driver.export.readOnly)
    // base:allocation negotiated and no minimum sent for a byte-granular
    // export: QEMU's alignment is 1; transfers up to 32 MiB.
    #expect(
      node.limits.requestAlignment
        == Int64(driver.export.minimumBlock == 0 ? 1 : driver.export.minimumBlock))
    #expect(node.limits.maxTransfer == 32 << 20)
    await node.close()
    await server.stop()
  }

  @Test func readsWritesZeroesDiscardsAndFlushesReachTheExport() async throws {
    let server = try await Server()
    let node = try await open(server)
    let pattern = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
    try await node.write(at: 4096, bytes: pattern, flags: .fua)
    #expect(try await node.read(at: 4096, count: 8192) == pattern)
    #expect(try await server.backend.root.read(at: 4096, count: 8192) == pattern)
    // Unaligned reads, one of one byte.
    #expect(try await node.read(at: 4101, count: 3) == Array(pattern[5..<8]))
    #expect(try await node.read(at: 12287, count: 1) == [pattern[8191]])
    try await node.writeZeroes(at: 8192, count: 4096)
    #expect(
      try await server.backend.root.read(at: 8192, count: 4096)
        == [UInt8](repeating: 0, count: 4096))
    try await node.flush()
    try await node.discard(at: 4096, count: 4096)
    await node.close()
    await server.stop()
  }

  @Test func blockStatusComesFromBaseAllocation() async throws {
    let server = try await Server()
    server.memory.populate(at: 65536, bytes: [UInt8](repeating: 0xaa, count: 65536))
    let node = try await open(server)
    let hole = try await node.blockStatus(offset: 0, bytes: 1 << 20, wantZero: true)
    #expect(hole.count == 65536)
    #expect(!hole.flags.contains(.data))
    #expect(hole.flags.contains(.zero))
    let data = try await node.blockStatus(offset: 65536, bytes: 1 << 20, wantZero: true)
    #expect(data.count == 65536)
    #expect(data.flags.contains(.data))
    #expect(!data.flags.contains(.zero))
    await node.close()
    await server.stop()
  }

  @Test func manyRequestsInFlightOnOneConnection() async throws {
    let server = try await Server()
    let node = try await open(server)
    let count = 64
    let writes = (0..<count).map { index in
      Task { @BlockActor in
        try await node.write(
          at: Int64(index) * 4096, bytes: [UInt8](repeating: UInt8(index + 1), count: 4096))
      }
    }
    for write in writes { try await write.value }
    let readTasks = (0..<count).map { index in
      Task { @BlockActor in try await node.read(at: Int64(index) * 4096, count: 4096) }
    }
    var reads: [[UInt8]] = []
    for read in readTasks { reads.append(try await read.value) }
    for index in 0..<count {
      #expect(reads[index] == [UInt8](repeating: UInt8(index + 1), count: 4096))
    }
    await node.close()
    await server.stop()
  }

  @Test func readOnlyExportOpensOnlyReadOnly() async throws {
    let server = try await Server(readOnly: true)
    await #expect(throws: BlockError(.permissionDenied, "Could not open image: Permission denied"))
    {
      _ = try await open(server)
    }
    let node = try await open(server, readOnly: true)
    #expect((node.driver as? NBDClientDriver)?.export.readOnly == true)
    await node.close()
    await server.stop()
  }

  @Test func requestsFailWithEIOOnceTheServerIsGone() async throws {
    let server = try await Server()
    let node = try await open(server)
    #expect(try await node.read(at: 0, count: 512).count == 512)
    await server.stop()
    await #expect(throws: BlockError(.ioError)) {
      _ = try await node.read(at: 0, count: 512)
    }
    await node.close()
  }

  @Test func unknownExportIsRefusedWithTheServersMessage() async throws {
    let server = try await Server()
    let error = await #expect(throws: BlockError.self) {
      _ = try await ImageOpener.open(
        filename: "nbd+unix:///nope?socket=\(server.socket)", format: "nbd")
    }
    #expect(
      error?.message == "Requested export not available\nserver reported: export 'nope' not present"
    )
    await server.stop()
  }
}
