import BlockTestSupport
import Foundation
import Testing

/// The image lock a server holds, as other users see it: while `spindle
/// serve` and qemu-nbd 7.2 serve the same image (raw or qcow2, with and
/// without -r), QEMU's tools and Spindle's open it with the same outcome.
/// qemu-nbd shares every permission on its export and opens without
/// `BDRV_O_NO_SHARE`: a raw image stays writable by others, a qcow2 image's
/// metadata keeps other writers (and, when served writable, readers that
/// need it consistent) away.
@Suite(
  .requires("qemu-nbd", "qemu-img", "qemu-io", "nbdinfo"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct NBDImageLockTests {
  /// The users that open the served image: a QEMU tool and Spindle's
  /// command of the same name, side by side.
  static func probes(_ image: String) -> [(tool: String, arguments: [String])] {
    [
      ("qemu-img", ["info", image]), ("qemu-img", ["compare", image, image]),
      ("qemu-img", ["map", image]), ("qemu-io", ["-c", "quit", image]),
      ("qemu-io", ["-r", "-c", "quit", image]),
    ]
  }

  @Test(arguments: ["raw", "qcow2"], [false, true])
  func otherUsersWhileServing(_ format: String, _ readOnly: Bool) async throws {
    let fixture = try ImageFixture()
    let image = fixture.path("served.\(format)")
    let created = try await runProcess("qemu-img", ["create", "-q", "-f", format, image, "1M"])
    #expect(created.status == 0, "\(created)")
    var seen: [NBDServer: [ToolResult]] = [:]
    for server in NBDServer.allCases {
      let socket = fixture.path("\(server).sock")
      let running = try await BackgroundNBDServer(
        server, socket: socket, options: ["-t"] + (readOnly ? ["-r"] : []) + [image])
      // The server listens before it opens the image: a finished handshake
      // means the image (and its lock) is open.
      let size = try await runNBDClient("nbdinfo", ["--size", "nbd+unix:///?socket=\(socket)"])
      #expect(size.status == 0, "\(server): \(size)")
      var results: [ToolResult] = []
      for (tool, arguments) in Self.probes(image) {
        let qemu = try await runNBDClient(tool, arguments)
        let spindle = await runSpindle(
          ["spindle", tool == "qemu-img" ? "img" : "io"] + arguments)
        #expect(spindle == qemu, "\(server) \(tool) \(arguments)")
        results.append(qemu)
      }
      seen[server] = results
      #expect(await running.terminate().status == 0)
    }
    #expect(seen[.spindle] == seen[.qemu])
  }
}
