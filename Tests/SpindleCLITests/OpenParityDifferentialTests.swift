import BlockTestSupport
import Foundation
import Testing

/// `open`, `reopen` and image options against the real qemu-io: option
/// errors, flag combinations QEMU refuses, the texts of unsupported driver
/// options, and reopening read-only and back.
@Suite(.requires("qemu-img", "qemu-io"))
struct OpenParityDifferentialTests {
  /// Arguments with `IMG` standing for the image.
  static let cases: [[String]] = [
    ["-c", "open -C -r IMG", "-c", "read 0 1"],
    ["-C", "-r", "-f", "raw", "IMG", "-c", "read 0 1"],
    [
      "-c", "open -t bogus IMG", "-c", "open -d bogus IMG", "-c", "open -i bogus IMG",
      "-c", "open -C -n -k -U IMG", "-c", "read -q 0 1", "-c", "close", "-c", "open",
    ],
    ["-c", "open -r -o driver=raw,file.filename=IMG", "-c", "info", "-c", "write 0 1"],
    ["-c", "open -o driver=raw,foo=bar,file.filename=IMG"],
    [#"json:{"driver":"copy-on-read","file.filename":"IMG","foo":"1"}"#, "-c", "read 0 1"],
    [#"json:{"driver":"blkdebug","image.filename":"IMG","foo":"1"}"#, "-c", "read 0 1"],
    [
      "-f", "raw", "IMG", "-c", "reopen -r", "-c", "write 0 1", "-c", "aio_write 0 1",
      "-c", "reopen -w", "-c", "write -P 3 0 1", "-c", "read -P 3 0 1",
    ],
    [
      "-f", "raw", "IMG", "-c", "reopen -o foo=bar", "-c", "reopen -r -w", "-c",
      "reopen -c bogus", "-c", "reopen x", "-c", "reopen -r -o read-only=on", "-c",
      "reopen -c writeback -o cache.direct=off", "-c", "reopen -c writethrough", "-c",
      "aio_write 0 512", "-c", "reopen", "-c", "reopen -o read-only=on", "-c", "discard 0 512",
      "-c", "reopen -r", "-c", "reopen -o read-only=on", "-c", "truncate 0", "-c",
      "reopen -o read-only=off", "-c", "write 0 1",
    ],
  ]

  @Test(arguments: cases)
  func sameOutputAndStatus(_ template: [String]) async throws {
    let fixture = try ImageFixture()
    let image = try fixture.makeImage("disk.raw")
    let arguments = template.map { $0.replacingOccurrences(of: "IMG", with: image) }
    let qemu = try await runProcess("qemu-io", arguments).masked(replacing: image)
    let spindle = await runSpindle(["qemu-io"] + arguments).masked(replacing: image)
    #expect(maskNodeNames(spindle) == maskNodeNames(qemu))
  }
}

/// The result with automatic node names (`#block123`) masked.
private func maskNodeNames(_ result: ToolResult) -> ToolResult {
  var result = result
  result.output.replace(#/#block\d+/#, with: "#block")
  result.error.replace(#/#block\d+/#, with: "#block")
  return result
}
