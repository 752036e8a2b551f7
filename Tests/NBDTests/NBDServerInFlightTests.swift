import BlockCore
import BlockDrivers
import BlockTestSupport
import Foundation
import Testing

@testable import NBD

/// How many requests one connection of Spindle's server runs at once: more
/// than qemu-nbd 7.2's 16 (`--max-requests`, 64 by default), while the READ
/// and WRITE data in flight stays within a byte budget (by default qemu-nbd
/// 7.2's own worst case). The export's driver holds every read of its data
/// at a gate, so the held count is the number the server let through.
/// (Time limits only catch a broken limit that never lets a held count
/// be reached: a full test run's load takes these over a minute.)
@BlockActor
struct NBDServerInFlightTests {
  /// An in-process server whose recording export holds reads at `gate`.
  @BlockActor
  final class Server {
    let gate = Gate()
    private let server: InProcessNBDServer
    /// The most reads held at once so far.
    private(set) var mostHeld = 0
    private var held = 0
    /// Whether reads are held (not while the client opens the export).
    private var holding = false

    init(maxRequests: Int, payloadBudget: Int = NBDProtocol.payloadBytesInFlight) async throws {
      let recording = RecordingDriver(size: 16 << 20)
      let node = BlockNode(name: "rec", driver: recording)
      try await node.open()
      // Data, not holes: the server reads only what block status says is
      // allocated (a hole is answered without reading).
      try await node.write(at: 0, bytes: [UInt8](repeating: 0x5a, count: 4 << 20))
      server = try await InProcessNBDServer(
        in: InProcessNBDServer.folder("nbdinflight"), node: node,
        export: NBDExportInfo(size: 16 << 20), maxRequests: maxRequests,
        payloadBudget: payloadBudget)
      recording.interceptor = { [weak self] call in
        guard let self, holding, case .read = call else { return }
        held += 1
        mostHeld = max(mostHeld, held)
        await gate.hold()
        held -= 1
      }
    }

    /// Opens the export through Spindle's client; reads are held from then on.
    func open() async throws -> BlockNode {
      let node = try await server.open()
      holding = true
      return node
    }

    /// Releases `count` held reads one at a time, each once the export
    /// holds as many as a limit of `atOnce` lets through (or all that are
    /// left): the most held at once then shows the limit.
    func releaseOneAtATime(_ count: Int, atOnce: Int) async {
      for remaining in stride(from: count, to: 0, by: -1) {
        await gate.waitForHeld(min(atOnce, remaining))
        gate.releaseOne()
      }
    }

    func stop() async { await server.stop() }
  }

  init() { NBDClient.register() }

  /// Starts `count` reads of `length` bytes at once through `node`.
  private func reads(_ node: BlockNode, count: Int, length: Int) -> [Task<[UInt8], any Error>] {
    (0..<count).map { index in
      Task { @BlockActor in try await node.read(at: Int64(index * length), count: length) }
    }
  }

  @Test(.timeLimit(.minutes(5)))
  func moreThanQemuNbdsSixteenRequestsRunAtOnce() async throws {
    let server = try await Server(maxRequests: NBDProtocol.defaultServerRequestsInFlight)
    let node = try await server.open()
    let tasks = reads(node, count: 40, length: 4096)
    // All 40 reach the export before any finishes (qemu-nbd 7.2 holds 16).
    await server.gate.waitForHeld(40)
    server.gate.releaseAll()
    for task in tasks { #expect(try await task.value == [UInt8](repeating: 0x5a, count: 4096)) }
    await node.close()
    await server.stop()
  }

  @Test(.timeLimit(.minutes(5)))
  func theRequestLimitHolds() async throws {
    let server = try await Server(maxRequests: 3)
    let node = try await server.open()
    let tasks = reads(node, count: 9, length: 4096)
    await server.releaseOneAtATime(9, atOnce: 3)
    for task in tasks { _ = try await task.value }
    #expect(server.mostHeld == 3)
    await node.close()
    await server.stop()
  }

  @Test(.timeLimit(.minutes(5)))
  func dataInFlightStaysWithinTheBudget() async throws {
    // Room for four 256 KiB reads at once, though 64 requests are allowed.
    let server = try await Server(maxRequests: 64, payloadBudget: 1 << 20)
    let node = try await server.open()
    let tasks = reads(node, count: 12, length: 256 << 10)
    await server.releaseOneAtATime(12, atOnce: 4)
    for task in tasks { _ = try await task.value }
    #expect(server.mostHeld == 4)
    await node.close()
    await server.stop()
  }
}
