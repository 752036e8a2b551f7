#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Why a number did not parse, in QEMU's terms.
enum NumberError: Error, Equatable {
  /// Not a number, or trailing characters (`-EINVAL`).
  case invalid
  /// Does not fit (`-ERANGE`).
  case range
}

/// A number parsed by ``parseQEMUSize(_:)``, with the deprecation QEMU 7.2 warns
/// about.
struct ParsedSize: Equatable {
  var value: UInt64
  /// A hexadecimal number carried a scaling suffix (`0x10k`), which QEMU 7.2
  /// accepts with a warning.
  var hexWithSuffix = false
}

/// Runs a C `strto*` function over `text` and returns its result, the number
/// of bytes consumed and whether it set `ERANGE`.
private func cParse<T>(
  _ text: String, from start: Int = 0,
  _ body: (UnsafePointer<CChar>, UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> T
) -> (value: T, end: Int, range: Bool) {
  text.withCString { base in
    var end: UnsafeMutablePointer<CChar>?
    errno = 0
    let value = body(base + start, &end)
    let range = errno == ERANGE
    let consumed = end.map { UnsafePointer($0) - base } ?? start
    return (value, consumed, range)
  }
}

/// QEMU's `qemu_strtou64` with an end pointer: `strtoull`, where no digits at
/// all is `.invalid` and overflow `.range`; returns the value and the index
/// just past the number.
private func qemuStrtou64(_ text: String, base: Int32) -> Result<(UInt64, Int), NumberError> {
  let (value, end, range) = cParse(text) { strtoull($0, $1, base) }
  if range { return .failure(.range) }
  if end == 0 {
    // glibc does not parse "0" out of "0x" followed by a non-hex digit when
    // nothing else precedes it; QEMU works around the same (Windows) case.
    let (zero, decimalEnd, _) = cParse(text) { strtol($0, $1, 10) }
    let bytes = Array(text.utf8)
    if zero == 0, decimalEnd < bytes.count,
      bytes[decimalEnd] == UInt8(ascii: "x")
        || bytes[decimalEnd] == UInt8(ascii: "X"), decimalEnd > 0
    {
      return .success((0, decimalEnd))
    }
    return .failure(.invalid)
  }
  return .success((value, end))
}

/// The multiplier of a size suffix (`B`, `K`, `M`, `G`, `T`, `P`, `E`, either
/// case; powers of 1024), or nil.
private func suffixMultiplier(_ byte: UInt8?) -> UInt64? {
  guard let byte else { return nil }
  switch byte | 0x20 {
  case UInt8(ascii: "b"): return 1
  case UInt8(ascii: "k"): return 1 << 10
  case UInt8(ascii: "m"): return 1 << 20
  case UInt8(ascii: "g"): return 1 << 30
  case UInt8(ascii: "t"): return 1 << 40
  case UInt8(ascii: "p"): return 1 << 50
  case UInt8(ascii: "e"): return 1 << 60
  default: return nil
  }
}

/// Parses a size the way QEMU 7.2's `qemu_strtosz` does: a decimal number with
/// an optional fraction and an optional suffix (`b`, `k`, `M`, `G`, `T`, `P`, `E`
/// in either case, powers of 1024, the fraction only with a suffix other than
/// `b`, rounded to the nearest byte), or a `0x` hexadecimal integer (a suffix is
/// accepted but deprecated). Leading white space and a `+` are accepted; a `-`
/// anywhere in the number is invalid. The whole string must be consumed.
func parseQEMUSize(_ text: String) -> Result<ParsedSize, NumberError> {
  let bytes = Array(text.utf8)
  func byte(at index: Int) -> UInt8? { index < bytes.count ? bytes[index] : nil }
  var end: Int
  var value: UInt64
  var fraction: UInt64 = 0
  var hex = false
  var failure: NumberError?

  parse: do {
    switch qemuStrtou64(text, base: 10) {
    case .failure(let error):
      // QEMU's end pointer stays where strtoull left it (the start for "no
      // digits", past the digits for an overflow).
      failure = error
      end = error == .range ? cParse(text) { strtoull($0, $1, 10) }.end : 0
      value = 0
      break parse
    case .success(let (parsed, parsedEnd)):
      value = parsed
      end = parsedEnd
    }
    if bytes[..<end].contains(UInt8(ascii: "-")) {
      failure = .invalid
      end = 0
      break parse
    }
    if value == 0, byte(at: end) == UInt8(ascii: "x") || byte(at: end) == UInt8(ascii: "X") {
      switch qemuStrtou64(text, base: 16) {
      case .failure(let error):
        failure = error
        end = error == .range ? cParse(text) { strtoull($0, $1, 16) }.end : 0
        break parse
      case .success(let (parsed, parsedEnd)):
        value = parsed
        end = parsedEnd
      }
      if byte(at: end) == UInt8(ascii: ".") {
        failure = .invalid
        end = 0
        break parse
      }
      hex = true
    } else if byte(at: end) == UInt8(ascii: ".") {
      let start = end
      let (number, numberEnd, range) = cParse(text, from: start) { strtod($0, $1) }
      if numberEnd == start || range || !number.isFinite {
        // strtod failed: skip the '.' and let the suffix check decide.
        end = (numberEnd == start ? start : numberEnd) + 1
      } else if bytes[start..<numberEnd].contains(where: { $0 | 0x20 == UInt8(ascii: "e") }) {
        failure = .invalid
        end = 0
        break parse
      } else {
        end = numberEnd
        let scaled = number * 0x1p64
        // C's conversion of 2^64 (a fraction rounded up to 1) yields 0 on x86.
        fraction = scaled >= 0x1p64 ? 0 : UInt64(scaled)
      }
    }
    var multiplier: UInt64 = 1
    if let suffix = suffixMultiplier(byte(at: end)) {
      multiplier = suffix
      end += 1
    } else {
      hex = false
    }
    if multiplier == 1 {
      if fraction != 0 {
        failure = .invalid
        end = 0
      }
    } else {
      let whole = value.multipliedFullWidth(by: multiplier)
      let part = fraction.multipliedFullWidth(by: multiplier)
      var high = whole.high
      var (low, carry) = whole.low.addingReportingOverflow(part.high)
      if carry { high += 1 }
      (low, carry) = low.addingReportingOverflow(part.low >> 63)
      if carry { high += 1 }
      if high != 0 { failure = .range }
      value = low
    }
  }
  if end < bytes.count { failure = .invalid }
  if let failure { return .failure(failure) }
  return .success(ParsedSize(value: value, hexWithSuffix: hex))
}

/// QEMU's `qemu_strtoul(text, NULL, 0, &result)`: C `strtoul` with base
/// detection (`0x` hex, leading `0` octal), negative numbers wrapping, and the
/// whole string required. Overflow is `.range`.
func parseCUnsignedLong(_ text: String) -> Result<UInt64, NumberError> {
  let (value, end, range) = cParse(text) { strtoul($0, $1, 0) }
  if range { return .failure(.range) }
  var consumed = end
  if value == 0 && end == 0 {
    let (zero, decimalEnd, _) = cParse(text) { strtol($0, $1, 10) }
    let bytes = Array(text.utf8)
    if zero == 0, decimalEnd < bytes.count,
      bytes[decimalEnd] == UInt8(ascii: "x") || bytes[decimalEnd] == UInt8(ascii: "X")
    {
      consumed = decimalEnd
    }
  }
  if consumed == 0 || consumed < text.utf8.count { return .failure(.invalid) }
  return .success(UInt64(value))
}

/// C `strtol(text, &end, 0)`: the value (clamped on overflow) and whether the
/// whole string was consumed. An empty string is 0 with nothing left over, as
/// in C.
func parseCLong(_ text: String) -> (value: Int, complete: Bool) {
  let (value, end, _) = cParse(text) { strtol($0, $1, 0) }
  return (value, end == text.utf8.count)
}
