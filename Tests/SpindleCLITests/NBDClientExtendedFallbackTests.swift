import BlockCore
import BlockDrivers
import BlockTestSupport
import Foundation
import NBD
import Testing

/// Spindle's client, which asks for extended headers first, against servers
/// that have none (qemu-nbd 7.2 and nbdkit 1.32 answer UNSUP): it falls
/// back to structured replies and QEMU 7.2's 32-bit requests, and its data
/// lands where it should (checked in the image file itself).
@Suite(.requires("qemu-nbd", "qemu-img", "nbdkit"))
@BlockActor
struct NBDClientExtendedFallbackTests {
  func open(_ socket: String) async throws -> BlockNode {
    NBDClient.register()
    var options = DriverOptions()
    options["driver"] = "nbd"
    options["server.type"] = "unix"
    options["server.path"] = socket
    var context = OpenContext()
    context.node.discard = .unmap
    return try await ImageOpener.open(filename: nil, options: options, context: context)
  }

  func pattern(_ seed: UInt8, _ count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 29 &+ Int(seed)) }
  }

  func bytes(of image: String, at offset: UInt64, count: Int) throws -> [UInt8] {
    let file = try FileHandle(forReadingFrom: URL(fileURLWithPath: image))
    defer { try? file.close() }
    try file.seek(toOffset: offset)
    return [UInt8](try file.read(upToCount: count) ?? Data())
  }

  @Test func qemuNBD72() async throws {
    let fixture = try ImageFixture()
    let image = fixture.path("big.raw")
    try await qemuImg(["create", "-q", "-f", "raw", image, "8G"])
    let server = try await BackgroundNBDServer(
      .qemu, socket: fixture.path("q.sock"), options: ["-t", "-f", "raw", image])
    let node = try await open(server.socket)
    let driver = try #require(node.driver as? NBDClientDriver)
    #expect(!driver.export.extendedHeaders)
    #expect(driver.export.structuredReplies)
    #expect(driver.export.contextID != nil)
    #expect(node.limits.maxPwriteZeroes == 32 << 20)
    let fourGiB: Int64 = 4 << 30
    let across = pattern(1, 8192)
    let far = pattern(2, 65536)
    try await node.write(at: fourGiB - 4096, bytes: across)
    try await node.write(at: 7 << 30, bytes: far)
    try await node.flush()
    #expect(try bytes(of: image, at: UInt64(fourGiB) - 4096, count: 8192) == across)
    #expect(try await node.read(at: 7 << 30, count: 65536) == far)
    // A 6 GiB zero-write in 32-bit requests, up to the far data.
    try await node.writeZeroes(at: 65536, count: (7 << 30) - 65536)
    try await node.flush()
    #expect(try bytes(of: image, at: UInt64(fourGiB) - 4096, count: 8192).allSatisfy { $0 == 0 })
    #expect(try bytes(of: image, at: 7 << 30, count: 65536) == far)
    let status = try await node.blockStatus(offset: 0, bytes: 8 << 30, wantZero: true)
    #expect(status.count <= Int64(Int32.max))
    await node.close()
    _ = await server.terminate()
  }

  @Test func nbdkit132() async throws {
    let fixture = try ImageFixture()
    let socket = fixture.path("k.sock")
    let nbdkit = try #require(ToolLocator.path(of: "nbdkit"))
    let server = try await BackgroundNBDServer(
      command: [nbdkit, "-f", "-U", socket, "memory", "8G"], socket: socket)
    let node = try await open(socket)
    let driver = try #require(node.driver as? NBDClientDriver)
    #expect(!driver.export.extendedHeaders)
    #expect(driver.export.structuredReplies)
    let data = pattern(3, 8192)
    try await node.write(at: (4 << 30) - 4096, bytes: data)
    #expect(try await node.read(at: (4 << 30) - 4096, count: 8192) == data)
    await node.close()
    _ = await server.terminate()
  }
}
