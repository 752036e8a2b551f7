import BlockCore
import BlockDrivers
import Foundation
import Testing

@testable import NBD

#if canImport(Glibc)
  import Glibc
#endif

/// `server.type=fd`: the client driver over a socket the caller already
/// connected (QEMU's `server.str` as a descriptor number), with qemu-img's
/// messages for what is not a connected socket. (The same messages are
/// compared with qemu-img by hand; a child process cannot inherit a
/// descriptor through this harness.)
@BlockActor
struct NBDClientFdTests {
  init() { NBDClient.register() }

  /// A Unix socket connected to `path`.
  static func connectedSocket(_ path: String) throws -> Int32 {
    let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    try #require(descriptor >= 0)
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
      raw.copyBytes(from: Array(path.utf8) + [0])
    }
    let connected = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
      }
    }
    try #require(connected == 0, "connect: \(errno)")
    return descriptor
  }

  static func open(_ options: [String: String]) async throws -> BlockNode {
    try await ImageOpener.open(
      filename: nil, format: "nbd", options: DriverOptions(options), context: OpenContext())
  }

  @Test func anInheritedSocketIsUsedOnce() async throws {
    let server = try await NBDClientTests.Server()
    let descriptor = try Self.connectedSocket(server.socket)
    let node = try await Self.open(["server.type": "fd", "server.str": "\(descriptor)"])
    try await node.write(at: 4096, bytes: [UInt8](repeating: 0x42, count: 4096))
    #expect(
      try await server.backend.root.read(at: 4096, count: 4096)
        == [UInt8](repeating: 0x42, count: 4096))
    let driver = try #require(node.driver as? NBDClientDriver)
    #expect(driver.config.server == .fd("\(descriptor)"))
    await node.close()
    await server.stop()
  }

  @Test func whatIsNotASocketIsRefusedAsQemuImgDoes() async throws {
    let file = Glibc.open("/dev/null", O_RDONLY)
    defer { Glibc.close(file) }
    for (str, message) in [
      ("abc", "Unable to parse FD number abc"),
      ("\(file)", "File descriptor '\(file)' is not a socket"),
    ] {
      do {
        _ = try await Self.open(["server.type": "fd", "server.str": str])
        Issue.record("\(str) was accepted")
      } catch {
        #expect("\(error)".hasSuffix(message), "\(error)")
      }
    }
    do {
      _ = try await Self.open(["server.type": "fd"])
      Issue.record("a missing str was accepted")
    } catch {
      #expect("\(error)".hasSuffix("Parameter 'str' is missing"), "\(error)")
    }
  }
}
