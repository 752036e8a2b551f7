import BlockTestSupport
import Foundation
import Testing

/// Differential tests: the real `qemu-io` (a child process, started as
/// `qemu-io` so that its `argv[0]` is the bare name) and `spindle io` (run
/// in-process through `Spindle.run` with `argv[0] = "qemu-io"`, the multi-call
/// name) get the same arguments and commands, each on its own copy of the same
/// raw image. Standard output and error must be identical once timings are
/// masked, the exit status identical, and `qemu-img compare` must find the
/// images identical (and their sizes equal).
@Suite(.requires("qemu-img", "qemu-io"))
struct DifferentialIOTests {
  /// A command script: options before the image, the commands (as `-c`
  /// arguments, or as standard input when `viaInput`), the image size.
  struct Script: Sendable, CustomTestStringConvertible {
    var name: String
    var options: [String] = ["-f", "raw"]
    var commands: [String]
    var viaInput = false
    var imageSize = 1 << 20
    /// Asynchronous requests on a file complete in an order that varies from
    /// run to run in QEMU; compare their reports as a multiset.
    var unorderedReports = false

    var testDescription: String { name }
  }

  static let scripts: [Script] = [
    Script(
      name: "aligned reads and writes with patterns",
      commands: [
        "write -P 0x41 0 4k", "read -P 0x41 0 4k", "read -v 0 48", "write -P 7 64k 64k",
        "read -P 7 64k 64k", "readv -P 7 64k 4k 4k 56k", "writev -P 9 256k 4k 8k",
        "read -P 9 256k 12k", "read -P 0x5a 512k 4k", "read -C 128k 64k", "read -v 128k 40",
      ]),
    Script(
      name: "unaligned reads and writes with patterns",
      commands: [
        "write -P 0x11 100 1000", "read -P 0x11 100 1000", "read -v 90 30", "write 4095 2",
        "read -v 4088 16", "read -P 0xcd 4095 2", "write -P 3 131073 511",
        "read -P 3 131073 511", "read -v 131070 8", "writev -P 4 7 3 500 1",
        "readv -v 0 5 6 7", "read -P 0x11 -s 10 -l 20 90 100", "read -P 0x11 -s 5 90 100",
      ]),
    Script(
      name: "zero writes with and without unmap",
      commands: [
        "write -P 1 0 128k", "write -z 4k 4k", "write -z -u 8k 8k", "write -z 100 50",
        "write -z -u 130000 3000", "read -P 0 4k 12k", "read -v 96 64", "read -P 1 16k 16k",
        "map", "alloc 0 128k", "alloc 4k 8k",
      ]),
    Script(
      name: "discards",
      commands: [
        "write -P 2 0 128k", "discard 0 64k", "discard 1 4k", "discard -q 100k 3", "map",
        "alloc 0 1M", "read -P 2 100k 4", "length", "info",
      ]),
    Script(
      name: "discards ignored with -d ignore",
      options: ["-f", "raw", "-d", "ignore"],
      commands: ["write -P 2 0 64k", "discard 0 64k", "read -P 2 0 64k", "map"]),
    Script(
      name: "aio_write x N then aio_flush",
      commands: [
        "aio_write -P 1 0 4k", "aio_write -P 2 4k 4k", "aio_write -P 3 8k 4k",
        "aio_write -P 4 12k 1k 3k", "aio_flush", "read -P 2 4k 4k", "aio_read -P 3 8k 4k",
        "aio_flush", "aio_write -z 16k 4k", "aio_flush", "read -P 0 16k 4k",
      ],
      unorderedReports: true),
    Script(
      name: "flush and FUA",
      commands: [
        "write -f -P 5 0 4k", "flush", "writev -f -P 6 4k 512 512", "aio_write -f 8k 4k",
        "aio_flush", "f", "read -P 6 4k 1k",
      ]),
    Script(
      name: "map, alloc, length and info",
      commands: [
        "map", "alloc 0", "alloc 128k 64k", "alloc 1M", "alloc 1020k 8k", "length", "info",
      ]),
    Script(
      name: "requests past the end of the image",
      commands: [
        "read 1M 1", "read 1020k 8k", "write 1M 1", "write -z 1023k 2k", "discard 1M 512",
        "readv 1020k 4k 4k", "writev 1M 1", "aio_read 1M 1", "aio_write 1020k 8k", "aio_flush",
        "read -q 0 1",
      ]),
    Script(
      name: "bad options and arguments",
      commands: [
        "read -Z 0 1", "read 0 -1", "write -n 0 1", "write -u 0 1", "write -z -P 1 0 1",
        "write -b -z 0 512", "write -f -c 0 512", "write -c 1 512", "write -c 0 511",
        "read -l 5 0 10", "read -P 0 -l 20 0 10", "read -P 300 0 1", "read x 1", "read 0 9E",
        "read 0 3G", "write 0 3G", "read 0 1kb", "read 0 0x10k", "discard 0 1 2",
        "discard 0 3G", "alloc 0 1 2", "map 1", "readv 0 2G 2G", "aio_write -z 0 1 2",
        "aio_write -u 0 1", "aio_read -P x 0 1", "foo", "read", "sleep x", "help foo",
        "truncate -m bogus 1", "write -s /nonexistent/file 0 4", "write -s /dev/null 0 4",
      ]),
    Script(
      name: "help texts",
      commands: [
        "help", "help read", "help r", "help readv", "help write", "help writev",
        "help aio_read", "help aio_write", "help discard", "help open", "help sigraise",
        "help reopen", "help map", "help ?",
      ]),
    Script(
      name: "commands from standard input",
      commands: [
        "write -P 8 0 4k", "read -P 8 0 4k", "", "  read   -q 0  1 ", "read", "length",
        "quit", "write 0 1",
      ],
      viaInput: true),
    Script(
      name: "cache=none with unaligned requests",
      options: ["-f", "raw", "-t", "none"],
      commands: ["write -P 9 1 100", "read -P 9 1 100", "write -z 3 5000", "read -v 0 16", "map"]),
    Script(
      name: "-n and writethrough and unsafe caches",
      options: ["-f", "raw", "-n", "-t", "unsafe"],
      commands: ["write -P 1 0 64k", "flush", "read -P 1 0 64k"]),
    Script(
      name: "read-only images",
      options: ["-f", "raw", "-r"],
      commands: [
        "write 0 1", "writev 0 1", "aio_write 0 1", "discard 0 1", "truncate 1", "read -P 0 0 1",
        "flush",
      ]),
    Script(
      name: "vmstate and compressed writes are not supported by raw",
      commands: ["write -c 0 64k", "write -b 0 512", "read -b 0 512", "write -z -n 0 4k"]),
    Script(
      name: "truncate",
      commands: ["truncate 2M", "length", "map", "read -P 0 1M 4k", "truncate 512k", "length"]),
    Script(name: "probed raw", options: [], commands: ["write -P 3 0 512", "read -P 3 0 512"]),
    Script(name: "probed raw read-only (no warning)", options: ["-r"], commands: ["read -q 0 1"]),
    Script(
      name: "native AIO needs cache=none", options: ["-f", "raw", "-i", "native"],
      commands: ["read -q 0 1"]),
    Script(
      name: "native AIO with -n", options: ["-f", "raw", "-k", "-n", "-i", "threads"],
      commands: ["write -P 1 0 4k", "read -P 1 0 4k"]),
    Script(
      name: "copy-on-read without backing",
      options: ["-f", "raw", "-C"],
      commands: ["read -P 0x5a 512k 4k", "map"]),
  ]

  @Test(arguments: scripts)
  func sameOutputStatusAndImage(_ script: Script) async throws {
    let fixture = try ImageFixture()
    let base = try fixture.makeImage("base.raw", size: script.imageSize)
    let qemuImage = try fixture.copy(base, to: "qemu.raw")
    let spindleImage = try fixture.copy(base, to: "spindle.raw")
    func arguments(_ image: String) -> [String] {
      script.options + [image] + (script.viaInput ? [] : script.commands.flatMap { ["-c", $0] })
    }
    let input = script.viaInput ? script.commands.joined(separator: "\n") + "\n" : ""
    let qemu = try await runProcess("qemu-io", arguments(qemuImage), input: input)
      .masked(replacing: qemuImage)
    let spindle = await runSpindle(["qemu-io"] + arguments(spindleImage), input: input)
      .masked(replacing: spindleImage)
    if script.unorderedReports {
      #expect(reportBlocks(spindle.output) == reportBlocks(qemu.output), "\(qemu)\n\(spindle)")
      #expect(spindle.error == qemu.error)
      #expect(spindle.status == qemu.status)
    } else {
      #expect(spindle == qemu)
    }
    try await expectSameImages(qemuImage, spindleImage)
  }

  /// The output split into lines, sorted: the same reports in any order.
  private func reportBlocks(_ text: String) -> [String] {
    text.split(separator: "\n").map(String.init).sorted()
  }
}

/// `qemu-img compare` finds the images identical and they have the same size.
func expectSameImages(_ first: String, _ second: String) async throws {
  let sizes = try [first, second].map {
    try FileManager.default.attributesOfItem(atPath: $0)[.size] as? Int
  }
  #expect(sizes[0] == sizes[1], "image sizes differ")
  let compare = try await ChildProcess.run(
    QEMU.qemuImg!, ["compare", "-q", "-f", "raw", "-F", "raw", first, second])
  #expect(compare.termination.status == 0, "qemu-img compare: images differ")
}
