import BlockCore
import BlockDrivers
import Foundation

@testable import NBD

/// An `NBDServer` in this process over `node`, persistent and without a
/// handshake limit (see NBDClientTests.Server), on a Unix socket in its own
/// folder: serving once made, until ``stop()``, which removes the folder.
@BlockActor
final class InProcessNBDServer {
  let directory: URL
  let socket: String
  let backend: BlockBackend
  private let server: NBDServer
  private var task: Task<Void, Never>?
  private let log = Log()

  /// What the server reported (qemu-nbd's stderr lines).
  var reports: [String] { log.lines }

  @BlockActor private final class Log {
    var lines: [String] = []
  }

  /// A fresh folder for a server (files such as `keys.psk` may go in it
  /// before the server is made).
  static func folder(_ prefix: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent(
      "\(prefix)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
  }

  init(
    in directory: URL, node: BlockNode, export: NBDExportInfo, tls: NBDServerTLS? = nil,
    maxRequests: Int = NBDProtocol.defaultServerRequestsInFlight,
    payloadBudget: Int = NBDProtocol.payloadBytesInFlight
  ) async throws {
    self.directory = directory
    socket = directory.appendingPathComponent("s.sock").path
    backend = BlockBackend(root: node)
    server = NBDServer(
      persistent: true, shared: 0, handshakeLimit: nil, tls: tls, maxRequests: maxRequests,
      payloadBudget: payloadBudget
    ) { [log] in log.lines.append($0) }
    try await server.listen(on: .unix(path: socket))
    task = Task { [server, backend] in await server.run(backend: backend, export: export) }
  }

  /// Opens the export through Spindle's client driver with `options`.
  func open(_ options: DriverOptions = DriverOptions()) async throws -> BlockNode {
    try await ImageOpener.open(
      filename: "nbd+unix:///?socket=\(socket)", format: "nbd", options: options,
      context: OpenContext())
  }

  /// Stops serving, waits until the server has ended and removes the folder.
  func stop() async {
    server.shutdown()
    await task?.value
    task = nil
    try? FileManager.default.removeItem(at: directory)
  }
}
