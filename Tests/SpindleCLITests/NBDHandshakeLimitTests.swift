import BlockTestSupport
import Foundation
import Testing

/// The handshake time limit (QEMU 9.1's answer to CVE-2024-7409; qemu-nbd
/// 7.2 has none): a client that connects and never negotiates is dropped
/// after `--handshake-limit` seconds, and the server goes on serving.
@Suite(
  .requires("qemu-img", "nbdinfo"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct NBDHandshakeLimitTests {
  @Test func silentClientIsDropped() async throws {
    let fixture = try ImageFixture()
    let image = fixture.path("a.qcow2")
    let created = try await runProcess("qemu-img", ["create", "-q", "-f", "qcow2", image, "1M"])
    try #require(created.status == 0, "\(created)")
    let socket = fixture.path("s.sock")
    let running = try await BackgroundNBDServer(
      .spindle, socket: socket, options: ["-t", "--handshake-limit=1", "-f", "qcow2", image])
    let silent = try NBDSocket(path: socket)
    // The greeting comes, then nothing: the client says nothing either. The
    // server closing the connection ends the read (end of file) well before
    // the socket's 30-second receive timeout would.
    #expect(await silent.receive(18) != nil)
    let clock = ContinuousClock()
    let start = clock.now
    #expect(await silent.receive(1) == nil)
    #expect(clock.now - start < .seconds(20))
    let size = try await runNBDClient("nbdinfo", ["--size", "nbd+unix:///?socket=\(socket)"])
    #expect(size == ToolResult(status: 0, output: "1048576\n", error: ""))
    #expect(await running.terminate().status == 0)
  }

  @Test func badLimitIsRefused() async {
    let result = await runSpindle(["spindle", "serve", "--handshake-limit=x", "a.qcow2"])
    #expect(
      result == ToolResult(status: 1, output: "", error: "qemu-nbd: Invalid handshake limit 'x'\n"))
  }
}
