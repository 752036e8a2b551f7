import BlockCore
import CFileSupport
import Foundation
import Testing

@testable import BlockDrivers

/// cache=none: the file is opened with O_DIRECT and requests are aligned to
/// what the file system needs; where O_DIRECT is refused, the open fails with
/// QEMU's message.
@Suite("file driver: O_DIRECT")
@BlockActor
struct FileDirectIOTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  /// Opens with cache=none, or checks the refusal and returns nil.
  func openDirect(_ path: String, backend: FileBackend = .threads) async throws -> BlockNode? {
    do {
      return try await backend.open(path, cache: .none)
    } catch let error as BlockError where error.code == .invalidArgument {
      #expect(error.message == "Could not open '\(path)': filesystem does not support O_DIRECT")
      return nil
    }
  }

  @Test(
    "O_DIRECT opens with a probed alignment and unaligned I/O still round-trips",
    arguments: FileBackend.allCases)
  func directRoundTrip(backend: FileBackend) async throws {
    let path = try scratch.makeFile("disk", bytes: pattern(65536), size: 1 << 20)
    guard let node = try await openDirect(path, backend: backend) else { return }
    let driver = node.fileDriver
    let fd = try #require(driver.file?.fd)
    #expect(fcntl(fd, F_GETFL) & cfs_o_direct() != 0)
    #expect(driver.direct)
    #expect([512, 1024, 2048, 4096].contains(driver.requestAlignment))
    #expect(node.limits.requestAlignment == driver.requestAlignment)
    #expect(node.limits.minMemAlignment > 1)
    #expect(node.limits.optMemAlignment >= 4096)

    // Unaligned offset and length: the engine pads to the alignment.
    try await node.write(at: 1001, bytes: pattern(5000, seed: 9))
    #expect(try await node.read(at: 1001, count: 5000) == pattern(5000, seed: 9))
    // A caller buffer at an odd address goes through an aligned bounce buffer.
    let storage = IOVector(allocating: 8192 + 1)
    let misaligned = storage.slice(1, 8192)
    #expect(driver.needsBounce(misaligned))
    try await node.read(at: 0, into: misaligned)
    var expected = pattern(65536)
    expected.replaceSubrange(1001..<6001, with: pattern(5000, seed: 9))
    #expect(misaligned.toArray() == Array(expected[0..<8192]))
    misaligned.fill(7)
    try await node.write(at: 16384, from: misaligned)
    await node.close()
    #expect(Array(try contents(of: path)[16384..<24576]) == [UInt8](repeating: 7, count: 8192))
  }

  @Test(
    "O_DIRECT reads of a file whose end is not aligned return zeroes past the end",
    arguments: FileBackend.allCases)
  func directShortFile(backend: FileBackend) async throws {
    let path = try scratch.makeFile("short", bytes: pattern(1000))
    guard let node = try await openDirect(path, backend: backend) else { return }
    // The driver reads whole aligned blocks and gets a short read at 1000.
    #expect(node.limits.requestAlignment > 1)
    let bytes = try await node.read(at: 0, count: 4096)
    #expect(Array(bytes[0..<1000]) == pattern(1000))
    #expect(bytes[1000...].allSatisfy { $0 == 0 })
    await node.close()
  }

  @Test("O_DIRECT on tmpfs works or is refused with QEMU's message")
  func refusalMessage() async throws {
    // tmpfs refused O_DIRECT before Linux 6.6; where it is accepted the open succeeds.
    guard FileManager.default.fileExists(atPath: "/dev/shm") else { return }
    let path = "/dev/shm/spindle-direct-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    guard FileManager.default.createFile(atPath: path, contents: Data(pattern(4096))) else {
      return
    }
    defer { try? FileManager.default.removeItem(atPath: path) }
    if let node = try await openDirect(path) {
      #expect(node.fileDriver.direct)
      #expect(try await node.read(at: 0, count: 4096) == pattern(4096))
      await node.close()
    }
  }
}
