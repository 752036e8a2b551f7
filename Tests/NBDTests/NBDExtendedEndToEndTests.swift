import BlockCore
import BlockDrivers
import BlockTestSupport
import Foundation
import Testing

@testable import NBD

/// Spindle's client driver against Spindle's server, both in this process,
/// with extended headers and without (the switch on either side): a
/// zero-write and a discard over 6 GiB reach the server as one request each
/// (192 and 4 without), block status of an 8 GiB sparse export is one
/// extent, and data across the 4 GiB mark reads back as written. The
/// server's node records every call its driver gets.
@BlockActor
struct NBDExtendedEndToEndTests {
  static let size: Int64 = 8 << 30

  /// An in-process server over a recording driver, on a Unix socket.
  @BlockActor
  final class Server {
    let directory: URL
    let socket: String
    let server: NBDServer
    let recording: RecordingDriver
    let backend: BlockBackend
    private var task: Task<Void, Never>?

    /// A server in `directory` (a fresh folder when nil).
    init(extendedHeaders: Bool, directory: URL? = nil) async throws {
      self.directory =
        directory
        ?? FileManager.default.temporaryDirectory.appendingPathComponent(
          "nbdext-\(UUID().uuidString)")
      try FileManager.default.createDirectory(at: self.directory, withIntermediateDirectories: true)
      socket = self.directory.appendingPathComponent("s.sock").path
      var capabilities = DriverCapabilities(kind: .protocolDriver)
      capabilities.hasBlockStatus = true
      capabilities.supportsBacking = true
      capabilities.canWriteZeroes = true
      capabilities.supportedZeroFlags = [.mayUnmap]
      // 1 MiB pages: a 6 GiB zero-write visits 6144 of them, not 1.5 million
      // (this process's block-layer thread serves every in-process test).
      recording = RecordingDriver(
        size: NBDExtendedEndToEndTests.size, capabilities: capabilities, pageSize: 1 << 20)
      let node = BlockNode(name: "rec", driver: recording, options: NodeOptions(discard: .unmap))
      try await node.open()
      backend = BlockBackend(root: node)
      // No handshake limit: see NBDClientTests.Server.
      server = NBDServer(
        persistent: true, shared: 0, handshakeLimit: nil, extendedHeaders: extendedHeaders,
        report: { _ in })
      try await server.listen(on: .unix(path: socket))
      let export = NBDExportInfo(size: UInt64(NBDExtendedEndToEndTests.size))
      task = Task { [server, backend] in await server.run(backend: backend, export: export) }
    }

    /// Stops serving and waits until the server has ended; the folder goes
    /// too unless `keepingFolder`.
    func stop(keepingFolder: Bool = false) async {
      server.shutdown()
      await task?.value
      task = nil
      if !keepingFolder { try? FileManager.default.removeItem(at: directory) }
    }
  }

  init() { NBDClient.register() }

  /// Which side turns extended headers off (none: both want them).
  enum Switch: String, CaseIterable, CustomTestStringConvertible {
    case on, serverOff, clientOff
    var testDescription: String { rawValue }
    var negotiated: Bool { self == .on }
  }

  private func open(_ server: Server, _ mode: Switch, reconnectDelay: Int = 0) async throws
    -> BlockNode
  {
    var context = OpenContext()
    context.node.discard = .unmap
    var options = DriverOptions()
    if mode == .clientOff { options["x-extended-headers"] = "off" }
    if reconnectDelay > 0 { options["reconnect-delay"] = "\(reconnectDelay)" }
    return try await ImageOpener.open(
      filename: "nbd+unix:///?socket=\(server.socket)", format: "nbd", options: options,
      context: context)
  }

  private func pattern(_ seed: UInt8, _ count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) }
  }

  @Test(arguments: Switch.allCases)
  func bigZeroWritesAndDiscardsAndDataAcross4GiB(_ mode: Switch) async throws {
    let server = try await Server(extendedHeaders: mode != .serverOff)
    let node = try await open(server, mode)
    let driver = try #require(node.driver as? NBDClientDriver)
    #expect(driver.export.extendedHeaders == mode.negotiated)
    #expect(driver.export.structuredReplies)
    let head = pattern(1, 65536)
    let across = pattern(2, 8192)
    let tail = pattern(3, 65536)
    let fourGiB: Int64 = 4 << 30
    try await node.write(at: 0, bytes: head)
    try await node.write(at: fourGiB - 4096, bytes: across)
    try await node.write(at: 7 << 30, bytes: tail)
    #expect(try await node.read(at: fourGiB - 4096, count: 8192) == across)
    #expect(try await server.backend.root.read(at: fourGiB - 4096, count: 8192) == across)

    // One zero-write of 6 GiB: one NBD request with extended headers,
    // 32 MiB pieces without (QEMU 7.2's limit).
    server.recording.reset()
    let sixGiB: Int64 = 6 << 30
    try await node.writeZeroes(at: 65536, count: sixGiB)
    let zeroes = server.recording.ioCalls.compactMap { call -> Int64? in
      if case .writeZeroes(_, let length, _) = call { length } else { nil }
    }
    #expect(zeroes.reduce(0, +) == sixGiB)
    #expect(zeroes.count == (mode.negotiated ? 1 : Int(sixGiB / (32 << 20))))
    #expect(try await node.read(at: 0, count: 65536) == head)
    #expect(
      try await node.read(at: fourGiB - 4096, count: 8192) == [UInt8](repeating: 0, count: 8192))
    #expect(try await node.read(at: 7 << 30, count: 65536) == tail)

    // One discard of 6 GiB: one request, or pieces of 2^31 - 1 bytes.
    try await node.write(at: 2 << 30, bytes: across)
    server.recording.reset()
    try await node.discard(at: 1 << 30, count: sixGiB)
    let discards = server.recording.ioCalls.compactMap { call -> Int64? in
      if case .discard(_, let length) = call { length } else { nil }
    }
    #expect(discards.reduce(0, +) == sixGiB)
    let piece = Int64(Int32.max)
    #expect(discards.count == (mode.negotiated ? 1 : Int((sixGiB + piece - 1) / piece)))
    #expect(try await node.read(at: 2 << 30, count: 8192) == [UInt8](repeating: 0, count: 8192))
    #expect(try await node.read(at: 7 << 30, count: 65536) == tail)
    #expect(try await node.read(at: 0, count: 65536) == head)
    await node.close()
    await server.stop()
  }

  @Test(arguments: Switch.allCases)
  func blockStatusOfABigSparseExport(_ mode: Switch) async throws {
    let server = try await Server(extendedHeaders: mode != .serverOff)
    server.recording.memory.populate(at: 7 << 30, bytes: pattern(4, 65536))
    let node = try await open(server, mode)
    let hole = try await node.blockStatus(offset: 0, bytes: Self.size, wantZero: true)
    #expect(!hole.flags.contains(.data))
    #expect(hole.flags.contains(.zero))
    // 7 GiB of hole in one extended reply; without extended headers a
    // request covers less than 2 GiB.
    #expect(hole.count == (mode.negotiated ? 7 << 30 : Int64(Int32.max)))
    let data = try await node.blockStatus(offset: 7 << 30, bytes: 1 << 30, wantZero: true)
    #expect(data.count == 65536)
    #expect(data.flags.contains(.data))
    let end = try await node.blockStatus(
      offset: (7 << 30) + 65536, bytes: Self.size, wantZero: true)
    #expect(end.count == (1 << 30) - 65536)
    #expect(!end.flags.contains(.data))
    await node.close()
    await server.stop()
  }

  @Test func connectionLevelRequestsPast4GiB() async throws {
    let server = try await Server(extendedHeaders: true)
    let connection = try await NBDClientConnection.open(
      to: .unix(path: server.socket),
      handshake: NBDClientHandshake(export: "", context: NBDProtocol.baseAllocation))
    #expect(connection.export.extendedHeaders)
    // Block status without REQ_ONE over the whole export: one reply (its
    // first extent is kept), 8 GiB of hole.
    let extent = try await connection.request(
      .blockStatus, offset: 0, length: UInt64(Self.size))
    #expect(extent == NBDBlockStatusExtent(length: UInt64(Self.size), flags: 3))
    // A zero-write past the end is refused with EINVAL; the connection
    // goes on.
    await #expect(throws: BlockError(.invalidArgument)) {
      _ = try await connection.request(
        .writeZeroes, offset: UInt64(Self.size) - 4096, length: 1 << 33)
    }
    _ = try await connection.request(.trim, offset: 4096, length: UInt64(Self.size) - 4096)
    let io = server.recording.ioCalls
    #expect(io == [.discard(offset: 4096, length: Self.size - 4096)])
    await connection.close()
    await server.stop()
  }

  @Test func reconnectToAServerWithoutExtendedHeadersSplitsAgain() async throws {
    // The node's limits come from a first connection with extended headers;
    // the server is then replaced by one without them: a 6 GiB zero-write
    // (one piece by the node's limits) goes out in 32 MiB requests.
    let first = try await Server(extendedHeaders: true)
    let node = try await open(first, .on, reconnectDelay: 60)
    #expect(node.limits.maxPwriteZeroes > Int64(UInt32.max))
    try await node.write(at: 4 << 30, bytes: pattern(5, 4096))
    await first.stop(keepingFolder: true)
    let second = try await Server(extendedHeaders: false, directory: first.directory)
    second.recording.memory.populate(at: 4 << 30, bytes: pattern(5, 4096))
    try await node.writeZeroes(at: 0, count: 6 << 30)
    let zeroes = second.recording.ioCalls.compactMap { call -> Int64? in
      if case .writeZeroes(_, let length, _) = call { length } else { nil }
    }
    #expect(zeroes.count == 192)
    #expect(zeroes.reduce(0, +) == 6 << 30)
    let status = try await node.blockStatus(offset: 0, bytes: Self.size, wantZero: true)
    #expect(status.count <= Int64(Int32.max))
    #expect(try await node.read(at: 4 << 30, count: 4096) == [UInt8](repeating: 0, count: 4096))
    await node.close()
    await second.stop()
  }
}
