import BlockTestSupport
import Foundation
import Testing

/// qemu-nbd -l: an internal snapshot served read-only, by ID or name, or by
/// `snapshot.id=`/`snapshot.name=`; compared with qemu-nbd 7.2 through
/// nbdinfo (map, flags, sizes) and nbdcopy (the bytes), with the same
/// errors for missing snapshots, bad parameters and formats without
/// snapshots.
@Suite(
  .requires("qemu-nbd", "qemu-img", "qemu-io", "nbdinfo", "nbdcopy"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct NBDLoadSnapshotTests {
  /// A qcow2 image with snapshot `snap1` (1 MiB of 0x01) whose active layer
  /// has changed since (0x02 over the first 512 KiB, 0x03 at 2 MiB).
  static func image(_ fixture: ImageFixture) async throws -> String {
    let image = fixture.path("snapped.qcow2")
    for (tool, arguments) in [
      ("qemu-img", ["create", "-q", "-f", "qcow2", image, "4M"]),
      ("qemu-io", ["-f", "qcow2", "-c", "write -P 1 0 1M", image]),
      ("qemu-img", ["snapshot", "-c", "snap1", image]),
      ("qemu-io", ["-f", "qcow2", "-c", "write -P 2 0 512k", "-c", "write -P 3 2M 1M", image]),
    ] {
      let result = try await runProcess(tool, arguments)
      try #require(result.status == 0, "\(result)")
    }
    return image
  }

  func compare(_ client: String, _ arguments: [String], options: [String]) async throws
    -> ToolResult
  {
    let spindle = try await runNBDClient(client, arguments + NBDServer.spindle.activated(options))
    let qemu = try await runNBDClient(client, arguments + NBDServer.qemu.activated(options))
    #expect(spindle == qemu, "\(client) \(arguments) \(options)")
    return qemu
  }

  @Test(arguments: [
    ["-l", "snap1"], ["-l", "1"], ["-l", "snapshot.name=snap1"],
    ["--load-snapshot=snapshot.id=1,snapshot.name=snap1"],
  ])
  func servesTheSnapshot(_ selection: [String]) async throws {
    let fixture = try ImageFixture()
    let image = try await Self.image(fixture)
    let options = ["-f", "qcow2"] + selection + [image]
    let map = try await compare("nbdinfo", ["--map"], options: options)
    #expect(map.status == 0, "\(map)")
    let info = try await compare("nbdinfo", ["--json"], options: options)
    #expect(info.output.contains("\"is_read_only\": true"), "\(info)")
    let out = fixture.path("copied.raw")
    let copied = try await runNBDClient(
      "nbdcopy", NBDServer.spindle.activated(options) + [out])
    #expect(copied.status == 0, "\(copied)")
    let expected = fixture.path("expected.raw")
    let converted = try await runProcess(
      "qemu-img", ["convert", "-f", "qcow2", "-l", "snap1", "-O", "raw", image, expected])
    #expect(converted.status == 0, "\(converted)")
    #expect(
      try Data(contentsOf: URL(fileURLWithPath: out))
        == Data(contentsOf: URL(fileURLWithPath: expected)))
  }

  @Test(arguments: [
    ["-f", "qcow2", "-l", "nosuch"], ["-f", "qcow2", "-l", "snapshot.id=2"],
    ["-f", "qcow2", "-l", "snapshot.foo=1"], ["-f", "qcow2", "-l", "snapshot.name=snap1,x=1"],
    ["-f", "raw", "-l", "snap1"],
  ])
  func errors(_ options: [String]) async throws {
    let fixture = try ImageFixture()
    let image = try await Self.image(fixture)
    // The server's messages and statuses; the client's own complaint differs
    // (qemu-nbd never accepted the connection: a reset; Spindle closes it).
    var seen: [ToolResult] = []
    for server in NBDServer.allCases {
      let result = try await runNBDClient(
        "nbdinfo", ["--size"] + server.activated(options + [image]))
      let serverLines = result.error.split(separator: "\n").filter { $0.hasPrefix("qemu-nbd:") }
      seen.append(
        ToolResult(
          status: result.status, output: result.output,
          error: serverLines.joined(separator: "\n")))
    }
    #expect(seen[0].status != 0)
    #expect(seen[0] == seen[1])
  }
}
