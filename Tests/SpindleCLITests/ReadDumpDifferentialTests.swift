import BlockTestSupport
import Foundation
import Testing

/// `read -v` and its relatives dump the request's buffer after the read. The
/// dump must show what was read — the bytes of the image, zeroes on a new one —
/// exactly as qemu-io prints them. Before the buffer API was made scoped, the
/// optimiser released the buffer after the read's last use of its vector, and
/// the dump printed freed heap memory (`read -v 0 32` showed pointer-like
/// bytes) or crashed (`read -v 0 1M`, SIGSEGV) in release builds; under
/// AddressSanitizer every one of these scripts stops with a use-after-free.
@Suite(.requires("qemu-img", "qemu-io"))
struct ReadDumpDifferentialTests {
  static let scripts: [[String]] = [
    ["read -v 0 32"],
    ["read -v 0 1M"],
    ["write -P 0x5c 4096 8192", "read -v 4000 300"],
    ["write -P 0x11 0 64k", "readv -v 0 16 16 4k"],
    ["write -P 0x22 100 50", "aio_read -v 64 128", "aio_flush"],
    ["write -P 0x33 0 4k", "read -v -P 0x33 0 4k"],
    ["read -v 1020k 8k"],
  ]

  @Test("read -v dumps the bytes read, as qemu-io", arguments: scripts)
  func dump(commands: [String]) async throws {
    let fixture = try ImageFixture()
    let theirs = fixture.path("qemu.raw")
    let ours = fixture.path("spindle.raw")
    for image in [theirs, ours] {
      let created = try await runProcess("qemu-img", ["create", "-f", "raw", image, "1M"])
      try #require(created.status == 0, "\(created)")
    }
    let arguments = ["-f", "raw"] + commands.flatMap { ["-c", $0] }
    let expected = try await runProcess("qemu-io", arguments + [theirs]).masked(replacing: theirs)
    let actual = await runSpindle(["qemu-io"] + arguments + [ours]).masked(replacing: ours)
    #expect(actual == expected)
  }
}
