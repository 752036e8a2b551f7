import BlockTestSupport
import Foundation
import Testing

/// Differential tests without image files: `qemu-io` and `qemu-img bench` on
/// QEMU's `null-co` driver, and the tools' option handling. The real tools run
/// as child processes named `qemu-io` / `qemu-img`; Spindle runs in-process
/// with the same `argv[0]`. Outputs (timings masked), errors and exit statuses
/// must be identical.
@Suite struct DifferentialToolTests {
  static let nullZeroes = "driver=null-co,size=1M,read-zeroes=on"

  static let ioRuns: [[String]] = [
    // Completions on null-co are deterministic in QEMU: newest first, at
    // aio_flush or exit, after synchronous commands' own reports.
    [
      "--image-opts", nullZeroes, "-c", "aio_write -P 1 0 1k", "-c", "aio_write -P 2 1k 1k",
      "-c", "aio_write 2k 1k", "-c", "aio_flush", "-c", "aio_read -v 0 16", "-c",
      "aio_read -P 1 0 4", "-c", "read 0 1", "-c", "aio_flush", "-c", "aio_write -q 0 1",
    ],
    // qemu-io 7.2 quirks: -z ignores -P, and a zero-write's report measures from boot.
    [
      "--image-opts", nullZeroes, "-c", "aio_write -z -P 1 0 1", "-c", "aio_write -z 1k 1k",
      "-c", "aio_write -z -u -C 1k 1k", "-c", "aio_write -i 0 1", "-c", "aio_read -i 0 1",
      "-c", "aio_read 2M 1", "-c", "aio_write 2M 1", "-c", "aio_flush",
    ],
    // Without read-zeroes, reads leave qemu-io's 0xab fill in place.
    [
      "--image-opts", "driver=null-co,size=1M", "-c", "read -v 0 16", "-c", "map", "-c",
      "alloc 0 64k", "-c", "read -P 0 0 1", "-c", "info",
    ],
    [
      "--image-opts", nullZeroes, "-c", "write -c 0 64k", "-c", "write -f 0 4k", "-c",
      "write -n -z 0 4k", "-c", "write -z -u 0 4k", "-c", "discard -C 0 4k", "-c", "length",
      "-c", "truncate 2M", "-c", "sleep 1", "-c", "break a b", "-c", "remove_break x",
    ],
    ["-r", "--image-opts", nullZeroes, "-c", "write 0 1", "-c", "read -q 0 1"],
    [
      "-c", "length", "-c", "open -o driver=null-co", "-c", "length", "-c", "open x", "-c",
      "close", "-c", "length", "-c", "help close",
    ],
    [
      "-c", "open -t bogus -o driver=null-co", "-c", "open -d bogus", "-c", "open -i bogus",
      "-c", "open -Z", "-c", "open -o driver=null-co a b", "-c",
      "open -r -o driver=null-co,size=4k",
      "-c", "write 0 1",
    ],
    ["--image-opts", "driver=null-co,,", "-c", "length"],
    ["--image-opts", "foo", "-c", "length"],
    ["--image-opts", "size=1M", "-c", "length"],
    ["--image-opts", "driver=null-co,bogus=1", "-c", "length"],
    ["--image-opts", "driver=null-co,force-share=off", "-U", "-c", "length"],
    ["--image-opts", "driver=null-co,read-only=on", "-c", "write 0 1"],
    ["-f", "raw", "--image-opts", nullZeroes, "-c", "length"],
    ["-f", "bogus", "/nonexistent"], ["/nonexistent", "-c", "length"],
    ["-d", "bogus"], ["-t", "bogus"], ["-i", "bogus"],
    ["-U", "-c", "help"],
    ["-T", "x", "-T", "-y*", "-c", "help close"], ["-T", "events=/nonexistent", "-c", "help"],
  ]

  @Test(.requires("qemu-io"), arguments: ioRuns)
  func ioMatches(_ arguments: [String]) async throws {
    let qemu = try await runProcess("qemu-io", arguments).masked()
    let spindle = await runSpindle(["qemu-io"] + arguments).masked()
    #expect(spindle == qemu)
  }

  /// Option errors end with qemu-io's usage text, which names the program.
  static let usageRuns: [[String]] = [["a", "b"], ["-Z"], ["--bogus=3", "x"], ["-t"], ["-h"]]

  @Test(.requires("qemu-io"), arguments: usageRuns)
  func ioUsageMatches(_ arguments: [String]) async throws {
    let qemu = try await runProcess("qemu-io", arguments)
    let spindle = await runSpindle(["qemu-io"] + arguments)
    #expect(spindle == qemu)
  }

  @Test(.requires("qemu-io"))
  func standardInputOnNullCo() async throws {
    let input = "aio_write 0 1\naio_write 1 1\nlength\naio_read 0 1\n\n  \nread\nlength"
    let arguments = ["--image-opts", Self.nullZeroes]
    let qemu = try await runProcess("qemu-io", arguments, input: input).masked()
    let spindle = await runSpindle(["qemu-io"] + arguments, input: input).masked()
    #expect(spindle == qemu)
  }

  /// Every number format of the size table, as a read length.
  @Test(.requires("qemu-io"))
  func numberFormatsMatch() async throws {
    let lengths =
      NumberParsingTests.sizes.map(\.0).filter { !$0.hasPrefix(" ") }
      + NumberParsingTests.invalid.filter { !$0.isEmpty && !$0.contains(" ") }
      + ["16E", "16.5E", "18446744073709551616", "0xffffffffffffffffff", "8E", "0x10k"]
    let arguments =
      ["--image-opts", "driver=null-co,size=4G"] + lengths.flatMap { ["-c", "read -C 0 \($0)"] }
    let qemu = try await runProcess("qemu-io", arguments).masked()
    let spindle = await runSpindle(["qemu-io"] + arguments).masked()
    #expect(spindle == qemu)
  }

  static let benchRuns: [[String]] = [
    ["-c", "1000", "--image-opts", "driver=null-co,size=1G"],
    ["-c", "1000", "-w", "-d", "10", "--flush-interval", "100", "--image-opts", "driver=null-co"],
    [
      "-c", "500", "-w", "-d", "7", "--flush-interval=100", "--no-drain", "--pattern=0x5a",
      "--image-opts", "driver=null-co",
    ],
    [
      "-c", "10", "-q", "-w", "--pattern", "0x41", "-o", "4k", "-s", "512", "-S", "8k", "-t",
      "none", "-i", "io_uring", "-n", "-U", "--image-opts", "driver=null-co,size=1M",
    ],
    ["-c", "0", "--image-opts", "driver=null-co"],
    ["-c", "0x10", "-d", "010", "--image", "driver=null-co"],
    ["-c", "10", "-s", "1.5k", "-S", "0", "--image-opts", "driver=null-co"],
    ["-c", "10", "-o", "2M", "--image-opts", "driver=null-co,size=1M"],
    // QEMU 7.2 wraps offsets at the image size: the 133rd request straddles the end.
    ["-c", "300", "-d", "1", "-s", "4096", "-S", "7919", "--image-opts", "driver=null-co,size=1M"],
    ["-c", "10", "-s", "2M", "--image-opts", "driver=null-co,size=1M"],
    ["-c", "abc", "x"], ["-c", "1k", "x"], ["-c", "-1", "x"], ["-c", "3000000000", "x"],
    ["-d", "3G", "x"], ["-d", "abc", "x"], ["-s", "3G", "x"], ["-s", "xyz", "x"],
    ["-S", "-1", "x"], ["-S", "3G", "x"], ["-o", "-5", "x"], ["-o", "9E", "x"],
    ["-o", "0x10k", "-c", "1", "--image-opts", "driver=null-co"],
    ["--pattern", "256", "x"], ["--pattern", "x", "x"], ["-t", "bogus", "x"], ["-i", "bogus", "x"],
    ["-w", "--flush-interval", "-1", "x"], ["-w", "--flush-interval", "3G", "x"],
    ["-c", "10", "--flush-interval", "2", "x"],
    ["-c", "10", "-w", "-d", "4", "--flush-interval", "2", "x"],
    [], ["a", "b"], ["-Z", "x"], ["--bogus", "x"], ["-c"], ["--f", "3", "x"],
    ["--image-opts=x", "x"],
    ["--pattern"], ["-c", "1", "-Zw", "x"], ["-c", "1", "-wZ", "x"], ["x", "-wc"],
    ["--object", "secret,id=s,data=x", "x"], ["-f", "raw", "--image-opts", "driver=null-co"],
    ["-c", "1", "-U", "-w", "--image-opts", "driver=null-co"],
    ["-c", "1", "--image-opts", "driver=null-co,bogus=1"],
    ["-c", "1", "--image-opts", "driver=bogus"],
    ["-c", "1", "--image-opts", "size=1M"], ["-c", "1", "-f", "null-co", "null-co://"],
    ["-c", "1", "-f", "bogus", "x"],
  ]

  @Test(.requires("qemu-img"), arguments: benchRuns)
  func benchMatches(_ arguments: [String]) async throws {
    let qemu = try await runProcess("qemu-img", ["bench"] + arguments).masked()
    let spindle = await runSpindle(["qemu-img", "bench"] + arguments).masked()
    #expect(spindle == qemu)
  }

  static let imageToolRuns: [[String]] = [
    [], ["foo"], ["-Z", "bench"], ["-T"], ["-T", "x", "bench"], ["-T", "bdrv_*", "bench"],
    ["-T", "enable=-x,file=/dev/null", "bench"], ["-T", "foo,bar=1", "bench"],
    ["-T", "events=/nonexistent", "bench"],
  ]

  @Test(.requires("qemu-img"), arguments: imageToolRuns)
  func imageToolErrorsMatch(_ arguments: [String]) async throws {
    let qemu = try await runProcess("qemu-img", arguments).masked()
    let spindle = await runSpindle(["qemu-img"] + arguments).masked()
    #expect(spindle == qemu)
  }

  static let fileBenchRuns: [[String]] = [
    ["-c", "100"], ["-c", "100", "-f", "raw", "-i", "native"], ["-c", "100", "-f", "raw", "-n"],
    ["-c", "100", "-f", "raw", "-n", "-t", "none", "-d", "8"],
    ["-c", "100", "-w", "-U", "-f", "raw"], ["-c", "100", "-U", "-f", "raw", "-t", "directsync"],
    ["-c", "300", "-f", "raw", "-s", "4096", "-S", "7919"],
  ]

  /// Benchmarks on a raw file: the same messages for the same options.
  @Test(.requires("qemu-img"), arguments: fileBenchRuns)
  func fileBenchMatches(_ options: [String]) async throws {
    let fixture = try ImageFixture()
    let image = try fixture.makeImage("bench.raw", size: 1 << 20)
    let qemu = try await runProcess("qemu-img", ["bench"] + options + [image])
      .masked(replacing: image)
    let spindle = await runSpindle(["qemu-img", "bench"] + options + [image])
      .masked(replacing: image)
    #expect(spindle == qemu)
  }

  /// A write benchmark on copies of a raw file leaves identical images.
  @Test(.requires("qemu-img"))
  func benchWritesTheSameData() async throws {
    let fixture = try ImageFixture()
    let base = try fixture.makeImage("base.raw", size: 1 << 20)
    let qemuImage = try fixture.copy(base, to: "qemu.raw")
    let spindleImage = try fixture.copy(base, to: "spindle.raw")
    let options = [
      "-w", "-f", "raw", "-c", "300", "-d", "16", "-s", "3000", "-S", "7919", "--pattern",
      "0x77", "--flush-interval", "32",
    ]
    let qemu = try await runProcess("qemu-img", ["bench"] + options + [qemuImage])
      .masked(replacing: qemuImage)
    let spindle = await runSpindle(["qemu-img", "bench"] + options + [spindleImage])
      .masked(replacing: spindleImage)
    #expect(spindle == qemu)
    try await expectSameImages(qemuImage, spindleImage)
  }
}
