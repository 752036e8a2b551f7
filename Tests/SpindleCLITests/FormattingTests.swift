import Testing

@testable import SpindleCLI

/// qemu-io's number and report formats (`cvtstr`, `timestr`, `print_report`,
/// `dump_buffer`). The expected strings are qemu-io's, as printed by 7.2.
@Suite struct FormattingTests {
  static let sizes: [(Double, String)] = [
    (0, "0 bytes"), (1, "1 bytes"), (20, "20 bytes"), (136.422242, "136.422242 bytes"),
    (0.049827, "0.049827 bytes"), (1023, "1023 bytes"), (1024, "1 KiB"), (1536, "1.500 KiB"),
    (4095, "3.999 KiB"), (854_153.2, "834.134 KiB"), (1_048_576, "1 MiB"),
    (2_310_144, "2.203 MiB"), (1_073_741_824, "1 GiB"), (59_932_000_000, "55.816 GiB"),
    (1_099_511_627_776, "1 TiB"), (1_125_899_906_842_624, "1 PiB"),
    (1_152_921_504_606_846_976, "1 EiB"), (1.0005, "1 bytes"),
  ]

  @Test(arguments: sizes)
  func humanSizes(_ value: Double, _ expected: String) {
    #expect(humanSize(value) == expected)
  }

  @Test func infiniteRatesStayReadable() {
    #expect(humanSize(.infinity) == "inf EiB")
  }

  @Test func elapsedTimes() {
    #expect(elapsedText(seconds: 0, nanoseconds: 0, verbose: false) == "00.00 sec")
    #expect(elapsedText(seconds: 0, nanoseconds: 5_000_000, verbose: false) == "00.01 sec")
    #expect(elapsedText(seconds: 0, nanoseconds: 123_456_789, verbose: true) == "0:00:00.12")
    #expect(elapsedText(seconds: 20551, nanoseconds: 290_000_000, verbose: false) == "5:42:31.29")
    #expect(elapsedText(seconds: 61, nanoseconds: 500_000_000, verbose: false) == "0:01:01.50")
  }

  @Test func reportLines() {
    let elapsed = MonotonicInstant(seconds: 0, nanoseconds: 2_000_000)
    #expect(
      ioReport(
        "wrote", elapsed: elapsed, offset: 0, count: 4096, total: 4096, ops: 1,
        machineReadable: false)
          == """
          wrote 4096/4096 bytes at offset 0
          4 KiB, 1 ops; 00.00 sec (1.953 MiB/sec and 500.0000 ops/sec)

          """)
    #expect(
      ioReport(
        "read", elapsed: elapsed, offset: 512, count: 512, total: 512, ops: 1,
        machineReadable: true) == "512,1,0:00:00.00,256000.000,500.000\n")
    let second = MonotonicInstant(seconds: 1, nanoseconds: 0)
    #expect(
      ioReport(
        "discard", elapsed: second, offset: 1024, count: 1, total: 1, ops: 1,
        machineReadable: false)
          == """
          discard 1/1 bytes at offset 1024
          1 bytes, 1 ops; 0:00:01.00 (1 bytes/sec and 1.0000 ops/sec)

          """)
  }

  @Test func monotonicDifferencesBorrow() {
    let later = MonotonicInstant(seconds: 10, nanoseconds: 100)
    let earlier = MonotonicInstant(seconds: 8, nanoseconds: 200)
    #expect(later.since(earlier) == MonotonicInstant(seconds: 1, nanoseconds: 999_999_900))
  }

  @Test func hexdumpLines() {
    let bytes: [UInt8] = Array(repeating: 0x41, count: 6) + Array(repeating: 0, count: 14)
    let text = bytes.withUnsafeBytes { hexdump($0, offset: 4090) }
    #expect(
      text == """
        00000ffa:  41 41 41 41 41 41 00 00 00 00 00 00 00 00 00 00  AAAAAA..........
        0000100a:  00 00 00 00  ....

        """)
  }

  @Test func hexdumpShowsOnlyLettersAndDigits() {
    let bytes: [UInt8] = [0x30, 0x39, 0x61, 0x7a, 0x41, 0x5a, 0x20, 0x2e, 0x7f, 0xff, 0x0a]
    let text = bytes.withUnsafeBytes { hexdump($0, offset: 0x1_0000_0000) }
    #expect(text == "100000000:  30 39 61 7a 41 5a 20 2e 7f ff 0a  09azAZ.....\n")
    #expect([UInt8]().withUnsafeBytes { hexdump($0, offset: 0) }.isEmpty)
  }

  @Test func lineSplittingFollowsFgets() {
    var splitter = LineSplitter()
    splitter.append(Array("read 0 1\n\nlength".utf8))
    #expect(splitter.nextLine(atEnd: false) == "read 0 1")
    #expect(splitter.nextLine(atEnd: false) == "")
    #expect(splitter.nextLine(atEnd: false) == nil)
    #expect(splitter.nextLine(atEnd: true) == "length")
    #expect(splitter.nextLine(atEnd: true) == nil)
    // A line longer than qemu-io's 1024-byte buffer arrives in pieces.
    splitter.append(Array(String(repeating: "a", count: 1030).utf8) + [0x0a])
    #expect(splitter.nextLine(atEnd: false)?.count == 1023)
    #expect(splitter.nextLine(atEnd: false) == "aaaaaaa")
  }
}
