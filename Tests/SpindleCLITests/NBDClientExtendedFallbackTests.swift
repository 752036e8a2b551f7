import BlockCore
import BlockDrivers
import BlockTestSupport
import Foundation
import NBD
import Testing

/// Spindle's client, which asks for extended headers first, against servers
/// that have none (qemu-nbd 7.2 and nbdkit 1.32 answer UNSUP): it falls
/// back to structured replies and QEMU 7.2's 32-bit requests, and its data
/// lands where it should.
@Suite(
  .requires("qemu-nbd", "qemu-img", "qemu-io", "nbdkit"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
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

  /// Against qemu-nbd 7.2 (whose 10-second handshake limit an in-process
  /// client can miss in a loaded test run) the client runs as a process of
  /// its own: `spindle io` through a `qemu-io` link, the same script as
  /// qemu-io 7.2 on an identical image and server, the same output and the
  /// same bytes in the image files.
  @Test func qemuNBD72() async throws {
    let fixture = try ImageFixture()
    var outputs: [ToolResult] = []
    var images: [String] = []
    for client in ["spindle", "qemu"] {
      let image = fixture.path("\(client).raw")
      try await qemuImg(["create", "-q", "-f", "raw", image, "8G"])
      let server = try await BackgroundNBDServer(
        .qemu, socket: fixture.path("\(client).sock"), options: ["-t", "-f", "raw", image])
      let script = [
        "write -P 0x11 4095M 2M", "write -P 0x22 7G 64k", "write -z 4096M 512k",
        "read -P 0x11 4095M 1M", "read -P 0 4096M 512k", "read -P 0x11 4295491584 512k",
        "read -P 0x22 7G 64k", "flush",
      ]
      let arguments =
        ["-f", "raw"] + script.flatMap { ["-c", $0] } + ["nbd+unix:///?socket=\(server.socket)"]
      let result =
        client == "spindle"
        ? try await runSpindleProcess(["qemu-io"] + arguments)
        : try await runProcess("qemu-io", arguments)
      outputs.append(result)
      images.append(image)
      _ = await server.terminate()
    }
    func timingless(_ result: ToolResult) -> String {
      result.output.split(separator: "\n").filter { !$0.contains("ops/sec") }
        .joined(separator: "\n")
    }
    #expect(outputs[0].status == 0, "\(outputs[0])")
    #expect(timingless(outputs[0]) == timingless(outputs[1]))
    #expect(outputs[0].error == outputs[1].error)
    #expect(!outputs[0].output.contains("Pattern verification failed"))
    for offset: UInt64 in [(4 << 30) - (1 << 20), 4 << 30, (4 << 30) + (512 << 10), 7 << 30] {
      #expect(
        try bytes(of: images[0], at: offset, count: 65536)
          == bytes(of: images[1], at: offset, count: 65536), "at \(offset)")
    }
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
