import Testing

@testable import SpindleCLI

/// QEMU 7.2's number syntax. The expected values were observed with
/// `qemu-io -c "read -C 0 N"` (the first field is the parsed length); the
/// interop suite also compares the two tools on these inputs.
@Suite struct NumberParsingTests {
  static let sizes: [(String, UInt64)] = [
    ("0", 0), ("1", 1), ("010", 10), ("1b", 1), ("1B", 1), ("1k", 1024), ("1K", 1024),
    ("1m", 1 << 20), ("1M", 1 << 20), ("2G", 2 << 30), ("1T", 1 << 40), ("1P", 1 << 50),
    ("1E", 1 << 60), ("7E", 7 << 60), ("0x10", 16), ("0X10", 16), ("0x1E", 30), ("0x1e", 30),
    ("+0x10", 16), (" 1", 1), ("+1", 1), (" +1k", 1024), ("1.k", 1024), ("1.0", 1),
    ("1.", 1), ("1.0k", 1024), ("1.5k", 1536), ("1.5M", 1_572_864), ("0.1k", 102),
    ("0.0009k", 1), ("0.00048828125k", 1), ("0.000244140625k", 0), ("1.0009765625k", 1025),
    ("1.9999999999999999999k", 1024), ("0x7fffffffffffffff", UInt64(Int64.max)),
    ("8E", 1 << 63),
  ]

  @Test(arguments: sizes)
  func validSizes(_ text: String, _ value: UInt64) {
    #expect(parseQEMUSize(text) == .success(ParsedSize(value: value)))
  }

  static let invalid = [
    "", "x", "k", "0x", "0xg", "00x10", ".5k", "0.5", "1.5", "1.5b", "1kb", "1kB", "1k2",
    "5.5.5k", "1e3", "1.e3k", "1.5e-1k", "inf", "nan", "-0", "-1", "0x1.5", "1 k",
    "99999999999999999999k", "1.5E0",
  ]

  @Test(arguments: invalid)
  func invalidSizes(_ text: String) {
    #expect(parseQEMUSize(text) == .failure(.invalid))
  }

  @Test(arguments: ["16E", "16.5E", "18446744073709551616", "0xffffffffffffffffff"])
  func sizesOutOfRange(_ text: String) {
    #expect(parseQEMUSize(text) == .failure(.range))
  }

  @Test func hexWithSuffixIsAcceptedButDeprecated() {
    #expect(parseQEMUSize("0x10k") == .success(ParsedSize(value: 16384, hexWithSuffix: true)))
    #expect(parseQEMUSize("0x10") == .success(ParsedSize(value: 16, hexWithSuffix: false)))
  }

  @Test func fractionsScaleExactly() {
    #expect(parseQEMUSize("7.5E") == .success(ParsedSize(value: 0x7800_0000_0000_0000)))
    #expect(parseQEMUSize("0.75k") == .success(ParsedSize(value: 768)))
  }

  /// qemu-img's request counts, depths, patterns and flush intervals go
  /// through `qemu_strtoul` with base detection.
  @Test func cUnsignedLongs() {
    #expect(parseCUnsignedLong("010") == .success(8))
    #expect(parseCUnsignedLong("0x10") == .success(16))
    #expect(parseCUnsignedLong("75000") == .success(75000))
    #expect(parseCUnsignedLong("-1") == .success(UInt64.max))
    #expect(parseCUnsignedLong("-0") == .success(0))
    #expect(parseCUnsignedLong("") == .failure(.invalid))
    #expect(parseCUnsignedLong("1k") == .failure(.invalid))
    #expect(parseCUnsignedLong("abc") == .failure(.invalid))
    #expect(parseCUnsignedLong("99999999999999999999") == .failure(.range))
  }

  /// qemu-io's pattern bytes and sleep times go through `strtol`.
  @Test func cLongs() {
    #expect(parseCLong("0x41") == (0x41, true))
    #expect(parseCLong("010") == (8, true))
    #expect(parseCLong("-1") == (-1, true))
    #expect(parseCLong("1k").complete == false)
  }
}
