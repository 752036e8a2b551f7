import BlockCore

/// Parses sizes the way QEMU does (`qemu_strtosz`): a decimal number (or `0x`
/// hexadecimal integer) with an optional suffix `b`, `k`/`K`, `M`, `G`, `T`, `P`,
/// `E` (powers of 1024). `defaultSuffix` applies to a bare number. Returns nil
/// for malformed input, a fraction without a multiplier, or a value that does
/// not fit in 63 bits.
public func parseSize(_ text: String, defaultMultiplier: Int64 = 1) -> Int64? {
  var digits = Substring(text)
  guard !digits.isEmpty else { return nil }
  var multiplier = defaultMultiplier
  if let last = digits.last, !last.isNumber, last != "." {
    guard let shift = suffixShift(last) else { return nil }
    multiplier = Int64(1) << shift
    digits = digits.dropLast()
  }
  guard !digits.isEmpty else { return nil }
  if digits.hasPrefix("0x") || digits.hasPrefix("0X") {
    guard let value = Int64(digits.dropFirst(2), radix: 16) else { return nil }
    let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
    return overflow ? nil : product
  }
  if let value = Int64(digits) {
    let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
    return overflow || value < 0 ? nil : product
  }
  // QEMU rejects a fraction without a multiplier (`1.5`, `1.5b`).
  guard multiplier > 1, digits.allSatisfy({ $0.isNumber || $0 == "." }),
    let value = Double(digits), value >= 0
  else { return nil }
  let product = value * Double(multiplier)
  guard product < 9.2e18 else { return nil }
  return Int64(product)
}

private func suffixShift(_ suffix: Character) -> Int? {
  switch suffix {
  case "b", "B": 0
  case "k", "K": 10
  case "m", "M": 20
  case "g", "G": 30
  case "t", "T": 40
  case "p", "P": 50
  case "e", "E": 60
  default: nil
  }
}
