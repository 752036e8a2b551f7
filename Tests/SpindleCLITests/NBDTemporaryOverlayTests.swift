import BlockTestSupport
import Foundation
import Testing

/// qemu-nbd -s: clients write to a temporary overlay; the image is left
/// untouched at exit. Compared with qemu-nbd 7.2: what nbdinfo sees, a
/// qemu-io session of writes, zeroes and reads over a Unix socket, and the
/// image's bytes afterwards.
@Suite(
  .requires("qemu-nbd", "qemu-img", "qemu-io", "nbdinfo"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct NBDTemporaryOverlayTests {
  @Test(arguments: ["qcow2", "raw"])
  func writesAreDiscarded(_ format: String) async throws {
    let fixture = try ImageFixture()
    let image = fixture.path("image.\(format)")
    for (tool, arguments) in [
      ("qemu-img", ["create", "-q", "-f", format, image, "4M"]),
      ("qemu-io", ["-f", format, "-c", "write -P 0x11 0 1M", image]),
    ] {
      let result = try await runProcess(tool, arguments)
      try #require(result.status == 0, "\(result)")
    }
    let before = try Data(contentsOf: URL(fileURLWithPath: image))
    let options = ["-s", "-f", format, image]
    for arguments in [["--json"], ["--map"], ["--map=qemu:allocation-depth"]] {
      let extra = arguments[0].hasSuffix("depth") ? ["-A"] : []
      let spindle = try await runNBDClient(
        "nbdinfo", arguments + NBDServer.spindle.activated(extra + options))
      let qemu = try await runNBDClient(
        "nbdinfo", arguments + NBDServer.qemu.activated(extra + options))
      #expect(qemu.status == 0, "\(qemu)")
      #expect(spindle == qemu, "\(arguments)")
    }
    var transcripts: [ToolResult] = []
    for server in NBDServer.allCases {
      let socket = fixture.path("\(server).sock")
      let running = try await BackgroundNBDServer(
        server, socket: socket, options: ["-t", "-A"] + options)
      let uri = "nbd+unix:///?socket=\(socket)"
      transcripts.append(
        try await runNBDClient(
          "qemu-io",
          [
            "-f", "raw", "-c", "write -P 0x22 512k 1M", "-c", "write -z 3M 64k", "-c",
            "read -P 0x22 512k 1M", "-c", "read -P 0x11 0 512k", uri,
          ]
        ).masked(replacing: socket))
      transcripts.append(
        try await runNBDClient("nbdinfo", ["--map=qemu:allocation-depth", uri]))
      #expect(await running.terminate().status == 0)
      #expect(try Data(contentsOf: URL(fileURLWithPath: image)) == before, "\(server)")
    }
    #expect(transcripts[0].status == 0, "\(transcripts[0])")
    #expect(Array(transcripts[0..<2]) == Array(transcripts[2..<4]))
  }
}
