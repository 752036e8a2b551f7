import BlockTestSupport
import Foundation
import Testing

/// Spindle's client and server as separate processes with extended headers
/// (`spindle img` through a `qemu-img` link, `spindle serve`), with QEMU 7.2's
/// tools as the oracle: over an 8 GiB sparse image, `map` and `compare`
/// print what qemu-img prints through the same server (its 7.2 client
/// negotiates no extended headers) and what it prints for the file itself.
@Suite(
  .requires("qemu-img", "qemu-io"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct NBDExtendedProcessTests {
  @Test func mapAndCompareOfABigSparseImageMatchQEMU() async throws {
    let fixture = try ImageFixture()
    let image = fixture.path("big.raw")
    try await qemuImg(["create", "-q", "-f", "raw", image, "8G"])
    let written = try await runProcess(
      "qemu-io",
      ["-f", "raw", "-c", "write -P 0x11 5G 1M", "-c", "write -P 0x22 4095M 2M", image])
    try #require(written.status == 0, "\(written)")
    let server = try await BackgroundNBDServer(
      .spindle, socket: fixture.path("s.sock"),
      options: ["--handshake-limit=0", "-t", "-f", "raw", image])
    let url = "nbd+unix:///?socket=\(server.socket)"
    for arguments in [
      ["map", "--output=json", url], ["map", url], ["compare", "-f", "raw", image, url],
    ] {
      let spindle = try await runSpindleProcess(["qemu-img"] + arguments)
      let qemu = try await runProcess("qemu-img", arguments)
      #expect(spindle == qemu, "\(arguments)")
      #expect(spindle.status == 0, "\(spindle)")
    }
    // The map through NBD is the file's own map (minus the name).
    let direct = try await runProcess("qemu-img", ["map", "--output=json", "-f", "raw", image])
    let viaNBD = try await runSpindleProcess(["qemu-img", "map", "--output=json", url])
    func ranges(_ output: String) -> [String] {
      output.split(separator: "\n").map {
        $0.replacingOccurrences(of: #", "offset": \d+"#, with: "", options: .regularExpression)
      }
    }
    #expect(ranges(viaNBD.output) == ranges(direct.output))
    _ = await server.terminate()
  }
}
