import BlockTestSupport
import Foundation
import Testing

/// fio's nbd engine (libnbd underneath) as a client of both servers: random
/// 4 KiB writes at queue depth 16 of each block's own offset, with fio's own
/// verification (every block read back and checked), from the same seed on
/// identical images, leave identical images behind.
@Suite(.requires("qemu-nbd", "qemu-img", "fio"))
struct NBDFioInteropTests {
  /// Whether this fio was built with the nbd engine (Debian's is).
  static func hasNBDEngine() async throws -> Bool {
    let help = try await runProcess("fio", ["--enghelp"])
    return help.output.split(separator: "\n").contains {
      $0.trimmingCharacters(in: .whitespaces) == "nbd"
    }
  }

  @Test func randomWritesVerifyAndLeaveTheSameImage() async throws {
    try #require(try await Self.hasNBDEngine(), "fio has no nbd engine")
    let fixture = try ImageFixture()
    var images: [String] = []
    for server in NBDServer.allCases {
      let image = fixture.path("\(server.rawValue).raw")
      try await qemuImg(["create", "-q", "-f", "raw", image, "16M"])
      let running = try await BackgroundNBDServer(
        server, socket: fixture.path("\(server.rawValue).sock"),
        options: ["-t", "-f", "raw", image])
      let fio = try await runNBDClient(
        "fio",
        [
          "--name=interop", "--ioengine=nbd", "--uri=nbd+unix:///?socket=\(running.socket)",
          "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=16M", "--io_size=8M",
          "--randseed=7", "--verify=pattern", "--verify_pattern=%o", "--do_verify=1",
          "--verify_fatal=1", "--verify_state_save=0",
        ])
      #expect(fio.status == 0, "\(server): \(fio)")
      #expect(!fio.output.contains("verify: bad"), "\(server): \(fio.output)")
      let ended = await running.terminate()
      #expect(ended.status == 0, "\(server)")
      images.append(image)
    }
    let compare = try await runProcess("qemu-img", ["compare", "-f", "raw", "-F", "raw"] + images)
    #expect(compare.status == 0, "\(compare)")
  }
}
