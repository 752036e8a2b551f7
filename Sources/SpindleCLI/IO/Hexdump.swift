/// qemu-io's `-v` dump of a buffer (its `dump_buffer`): 16 bytes a line, the
/// address (buffer offset plus `offset`) as at least 8 hex digits, two spaces,
/// each byte as two hex digits and a space, a space, then the bytes again with
/// anything but ASCII letters and digits shown as `.`. The last line is not
/// padded.
///
///     00000ffa:  41 41 41 41 41 41 00 00 00 00 00 00 00 00 00 00  AAAAAA..........
func hexdump(_ bytes: UnsafeRawBufferPointer, offset: Int64) -> String {
  let digits = Array("0123456789abcdef".utf8)
  var text: [UInt8] = []
  text.reserveCapacity((bytes.count / 16 + 1) * 80)
  var lineStart = 0
  while lineStart < bytes.count {
    let address = String(UInt64(bitPattern: offset &+ Int64(lineStart)), radix: 16)
    text.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: max(0, 8 - address.utf8.count)))
    text.append(contentsOf: address.utf8)
    text.append(contentsOf: ":  ".utf8)
    let lineEnd = min(lineStart + 16, bytes.count)
    for index in lineStart..<lineEnd {
      let byte = bytes[index]
      text.append(digits[Int(byte >> 4)])
      text.append(digits[Int(byte & 0xf)])
      text.append(UInt8(ascii: " "))
    }
    text.append(UInt8(ascii: " "))
    for index in lineStart..<lineEnd {
      let byte = bytes[index]
      let isAlphanumeric =
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
        || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
        || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
      text.append(isAlphanumeric ? byte : UInt8(ascii: "."))
    }
    text.append(UInt8(ascii: "\n"))
    lineStart = lineEnd
  }
  return String(decoding: text, as: UTF8.self)
}
