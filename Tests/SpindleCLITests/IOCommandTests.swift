import Foundation
import Testing

@testable import SpindleCLI

/// `spindle io` run in-process on Spindle's `memory` and `null-co` drivers:
/// command semantics that do not need QEMU to compare against. Timing values
/// are masked (``maskTimings(_:)``).
@Suite struct IOCommandTests {
  private let memory = "driver=memory,size=1M"
  private let nullZeroes = "driver=null-co,size=1M,read-zeroes=on"

  private func io(_ options: String, _ commands: [String], input: String = "") async
    -> ToolResult
  {
    let arguments = ["qemu-io", "--image-opts", options] + commands.flatMap { ["-c", $0] }
    return await runSpindle(arguments, input: input).masked()
  }

  @Test func writtenPatternsReadBackAndMismatchesFail() async {
    let result = await io(
      memory,
      [
        "write -P 0x41 100 1000", "read -P 0x41 100 1000", "read -q -P 0x41 99 2",
        "read -P 0 0 100",
      ]
    )
    #expect(
      result.output == """
        wrote 1000/1000 bytes at offset 100
        1000 bytes, 1 ops; TIME
        read 1000/1000 bytes at offset 100
        1000 bytes, 1 ops; TIME
        Pattern verification failed at offset 99, 2 bytes
        read 100/100 bytes at offset 0
        100 bytes, 1 ops; TIME

        """)
    #expect(result.status == 1)
    #expect(result.error.isEmpty)
  }

  @Test func patternSubRangeAndDump() async {
    let result = await io(
      memory, ["write -P 0x61 4 4", "read -v -P 0x61 -s 4 -l 4 0 12", "read -P 0x61 -s 3 0 8"])
    #expect(
      result.output == """
        wrote 4/4 bytes at offset 4
        4 bytes, 1 ops; TIME
        00000000:  00 00 00 00 61 61 61 61 00 00 00 00  ....aaaa....
        read 12/12 bytes at offset 0
        12 bytes, 1 ops; TIME
        Pattern verification failed at offset 3, 5 bytes
        read 8/8 bytes at offset 0
        8 bytes, 1 ops; TIME

        """)
    #expect(result.status == 1)
  }

  @Test func zeroWritesUnmapOnlyWithDashU() async {
    let result = await io(
      memory,
      ["write -q -P 1 0 64k", "write -q -z 0 4k", "write -q -z -u 4k 4k", "map", "alloc 0 64k"])
    #expect(
      result.output == """
        4 KiB (0x1000) bytes     allocated at offset 0 bytes (0x0)
        4 KiB (0x1000) bytes not allocated at offset 4 KiB (0x1000)
        56 KiB (0xe000) bytes     allocated at offset 8 KiB (0x2000)
        960 KiB (0xf0000) bytes not allocated at offset 64 KiB (0x10000)
        61440/65536 bytes allocated at offset 0 bytes

        """)
  }

  @Test func discardHonoursTheDiscardMode() async {
    let unmap = await io(memory, ["write -P 1 0 64k", "discard 0 64k", "map"])
    #expect(
      unmap.output.hasSuffix("1 MiB (0x100000) bytes not allocated at offset 0 bytes (0x0)\n"))
    let ignore = await runSpindle(
      [
        "qemu-io", "-d", "ignore", "--image-opts", memory, "-c", "write -P 1 0 64k", "-c",
        "discard 0 64k", "-c", "read -q -P 1 0 64k",
      ])
    #expect(ignore.status == 0)
  }

  @Test func requestsPastTheEndFail() async {
    let result = await io(
      nullZeroes, ["read 1M 1", "write 1023k 2k", "discard 1M 512", "readv 1020k 4k 1", "length"])
    #expect(
      result.output == """
        read failed: Input/output error
        write failed: Input/output error
        discard failed: Input/output error
        readv failed: Input/output error
        1 MiB

        """)
    #expect(result.status == 1)
  }

  /// Completions report where qemu-io's event loop runs: newest first, at
  /// `aio_flush`, after a synchronous command's own report.
  @Test func asynchronousReportsAreDeferredAndNewestFirst() async {
    let result = await io(
      nullZeroes,
      [
        "aio_write 0 1k", "aio_write 1k 1k", "aio_read -P 0 2k 512", "read -q 0 1", "length",
        "aio_flush", "aio_write -q 0 1",
      ])
    #expect(
      result.output == """
        1 MiB
        read 512/512 bytes at offset 2048
        512 bytes, 1 ops; TIME
        wrote 1024/1024 bytes at offset 1024
        1 KiB, 1 ops; TIME
        wrote 1024/1024 bytes at offset 0
        1 KiB, 1 ops; TIME

        """)
    #expect(result.status == 0)
  }

  @Test func asynchronousFailuresDoNotChangeTheStatus() async {
    let result = await io(nullZeroes, ["aio_write 1M 1", "aio_read -P 1 0 8"])
    #expect(
      result.output == """
        Pattern verification failed at offset 0, 8 bytes
        read 8/8 bytes at offset 0
        8 bytes, 1 ops; TIME
        aio_write failed: Input/output error

        """)
    #expect(result.status == 0)
  }

  @Test func standardInputWithPrompts() async {
    let result = await io(nullZeroes, [], input: "aio_write 0 1\nread\n\nlength\nquit\nlength\n")
    #expect(
      result.output
        == "qemu-io> qemu-io> wrote 1/1 bytes at offset 0\n1 bytes, 1 ops; TIME\n"
        + "qemu-io> qemu-io> 1 MiB\nqemu-io> ")
    #expect(result.error == "bad argument count 0 to read, expected at least 2 arguments\n")
    #expect(result.status == 1)
  }

  @Test func commandsAfterQuitDoNotRun() async {
    let result = await io(nullZeroes, ["length", "quit", "read 1M 1"])
    #expect(result.output == "1 MiB\n")
    #expect(result.status == 0)
  }

  @Test func misalignedBuffersCarryTheSameData() async {
    let result = await runSpindle(
      [
        "qemu-io", "-m", "--image-opts", memory, "-c", "write -P 0x33 3 5000", "-c",
        "read -q -P 0x33 3 5000", "-c", "readv -q -P 0x33 3 1000 4000",
      ])
    #expect(result.status == 0)
    #expect(result.error.isEmpty)
  }

  @Test func openCloseAndCommandsWithoutAFile() async {
    let result = await runSpindle(
      [
        "qemu-io", "-c", "length", "-c", "open -o driver=memory,size=4k", "-c", "length",
        "-c", "open -o driver=memory", "-c", "close", "-c", "info",
      ])
    #expect(result.output == "4 KiB\n")
    #expect(
      result.error == """
        no file open, try 'help open'
        qemu-io: file open already, try 'help close'
        no file open, try 'help open'

        """)
    #expect(result.status == 1)
  }

  @Test func readOnlyImagesRefuseWritesBeforeParsing() async {
    let result = await runSpindle(
      ["qemu-io", "-r", "--image-opts", memory, "-c", "write -Z 0 1", "-c", "read -q 0 1"])
    #expect(result.error == "qemu-io: Block node is read-only\n")
    #expect(result.status == 1)
  }

  @Test func snapshotModeKeepsTheImageUnchanged() async throws {
    let fixture = try ImageFixture()
    let image = try fixture.makeImage("snap.raw", size: 64 << 10)
    let written = await runSpindle(
      ["qemu-io", "-s", "-f", "raw", image, "-c", "write -P 7 0 4k", "-c", "read -q -P 7 0 4k"])
    #expect(written.status == 0)
    let after = await runSpindle(["qemu-io", "-f", "raw", image, "-c", "read -q -P 0 0 4k"])
    #expect(after.status == 0)
  }

  @Test func infoLengthAndHelpForOneCommand() async {
    let result = await io(nullZeroes, ["info", "help l", "length"])
    #expect(
      result.output == """
        format name: null-co
        format name: null-co
        l -- gets the length of the current file
        1 MiB

        """)
    #expect(result.status == 1)  // null-co has no cluster size: info fails silently.
  }
}
