import BlockTestSupport
import Foundation
import Testing

/// qemu-nbd --pid-file: once a client has negotiated (the server listens and
/// the export exists) the file holds the server's pid and a newline, and it
/// stays after exit; an uncreatable file is qemu-nbd's error and status 1.
@Suite(
  .requires("qemu-nbd", "qemu-img", "nbdinfo"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct NBDPidFileTests {
  @Test func pidWrittenAndLeftBehind() async throws {
    let fixture = try ImageFixture()
    let image = fixture.path("a.qcow2")
    let created = try await runProcess("qemu-img", ["create", "-q", "-f", "qcow2", image, "1M"])
    try #require(created.status == 0, "\(created)")
    for server in NBDServer.allCases {
      let pidFile = fixture.path("\(server).pid")
      let socket = fixture.path("\(server).sock")
      let running = try await BackgroundNBDServer(
        server, socket: socket, options: ["-t", "--pid-file=\(pidFile)", "-f", "qcow2", image])
      let size = try await runNBDClient("nbdinfo", ["--size", "nbd+unix:///?socket=\(socket)"])
      #expect(size.status == 0, "\(server): \(size)")
      let text = try String(contentsOfFile: pidFile, encoding: .utf8)
      #expect(text == "\(running.process.pid)\n", "\(server)")
      #expect(await running.terminate().status == 0)
      #expect(FileManager.default.fileExists(atPath: pidFile), "\(server)")
    }
  }

  @Test func uncreatablePidFile() async throws {
    let fixture = try ImageFixture()
    let image = fixture.path("a.qcow2")
    let created = try await runProcess("qemu-img", ["create", "-q", "-f", "qcow2", image, "1M"])
    try #require(created.status == 0, "\(created)")
    let arguments = [
      "--pid-file=\(fixture.path("nodir/p.pid"))", "-k", fixture.path("s.sock"), "-f", "qcow2",
      image,
    ]
    let qemu = try await runProcess("qemu-nbd", arguments)
    let spindle = await runSpindle(["spindle", "serve"] + arguments)
    let results = [qemu, spindle]
    #expect(results[0].status == 1)
    #expect(results[0] == results[1])
  }
}
