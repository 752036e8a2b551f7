import BlockCore
import Testing

@testable import BlockDrivers

/// `DriverOptions.parse` splits option strings as QEMU's `opts_do_parse`
/// does: keys end at `=` or `,`, `,,` escapes a comma in values only, and a
/// NUL ends the (C) string.
@Suite struct DriverOptionsParseTests {
  @Test func doubledCommasAreLiteralInValues() throws {
    let options = try DriverOptions.parse("a=x,,y,b=,,,c=z,,")
    #expect(options.values == ["a": "x,y", "b": ",", "c": "z,"])
  }

  @Test func keysEndAtTheFirstComma() throws {
    // QEMU reads ",,k=v" as two empty elements and then k=v: a key never
    // holds a comma, so a value ending in "," written back as ",," before
    // the next key cannot swallow that key's start.
    #expect(try DriverOptions.parse(",,k=v").values == ["k": "v"])
    #expect(try DriverOptions.parse("a=b,,,,,k=v").values == ["a": "b,,", "k": "v"])
    #expect(throws: BlockError.self) { try DriverOptions.parse("a=b,x,,y=z") }
  }

  @Test func textEndsAtTheFirstNUL() throws {
    #expect(try DriverOptions.parse("a=b\0,c=d").values == ["a": "b"])
    #expect(try DriverOptions.parse("\0bogus").values == [:])
  }

  @Test func impliedKeyTakesTheFirstBareElementWithEscapes() throws {
    let options = try DriverOptions.parse("x,,y,driver=raw", impliedKey: "file")
    #expect(options.values == ["file": "x,y", "driver": "raw"])
    #expect(throws: BlockError.self) { try DriverOptions.parse("driver=raw,x", impliedKey: "file") }
  }

  /// The libFuzzer finding (Fuzz/corpus/options/finding-nul-and-comma-keys):
  /// the options written back as `key=value,...` with doubled commas in
  /// values parse to the same options.
  @Test func fuzzFindingRoundTrips() throws {
    let bytes: [UInt8] =
      Array(repeating: 0x2C, count: 24) + Array("file.fe=a".utf8) + Array(repeating: 0x2C, count: 8)
      + [0, 0, 0, 0, 0, 0x37, 0xFF, 0xFF, 0xFF, 0x1F, 0x2C, 0x2C, 0x2C, 0x2C, 0x2C, 0x2C]
      + Array("ile,file.fe=a,,,".utf8) + [0, 0, 0, 0] + Array("b1a{\"aver=file".utf8)
      + [0, 0x6C, 0, 0x87, 0x2C, 0x2C]
    let text = String(decoding: bytes, as: UTF8.self)
    let options = try DriverOptions.parse(text)
    #expect(options.values == ["file.fe": "a,,,,"])
    let written = options.values.sorted { $0.key < $1.key }
      .map { $0.key + "=" + $0.value.replacingOccurrences(of: ",", with: ",,") }
      .joined(separator: ",")
    #expect(try DriverOptions.parse(written) == options)
  }
}
