import BlockCore
import Foundation

/// A `keys.psk` file as QEMU's `tls-creds-psk` reads it: one
/// `username:hexkey` per line (GnuTLS's `psktool` format).
struct NBDPSKFile: Sendable {
  /// A client named an identity the file has no key for.
  struct UnknownIdentity: Error, CustomStringConvertible {
    let identity: String
    var description: String { "no key for PSK identity '\(identity)'" }
  }

  /// Where the keys were read from.
  let path: String
  private let keys: [String: [UInt8]]

  /// Reads and parses the file; a line that is not `name:hex` is an error.
  init(path: String) throws {
    self.path = path
    guard let data = FileManager.default.contents(atPath: path),
      let text = String(data: data, encoding: .utf8)
    else {
      throw BlockError(.invalidArgument, "Cannot read PSK file \(path)")
    }
    var keys: [String: [UInt8]] = [:]
    for (number, line) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline)
      .enumerated()
    where !line.isEmpty {
      guard let colon = line.firstIndex(of: ":"),
        let key = Self.bytes(fromHex: line[line.index(after: colon)...]), !key.isEmpty
      else {
        throw BlockError(.invalidArgument, "Malformed line \(number + 1) in PSK file \(path)")
      }
      let name = String(line[..<colon])
      if keys[name] == nil { keys[name] = key }
    }
    self.keys = keys
  }

  /// The key for `identity`, if the file has one.
  func key(for identity: String) -> [UInt8]? { keys[identity] }

  /// The bytes a string of hex digit pairs spells, or nil when it is not one.
  static func bytes(fromHex hex: Substring) -> [UInt8]? {
    let digits = Array(hex.utf8)
    guard digits.count % 2 == 0 else { return nil }
    var bytes: [UInt8] = []
    bytes.reserveCapacity(digits.count / 2)
    for index in stride(from: 0, to: digits.count, by: 2) {
      guard let high = nibble(digits[index]), let low = nibble(digits[index + 1]) else {
        return nil
      }
      bytes.append(high << 4 | low)
    }
    return bytes
  }

  private static func nibble(_ digit: UInt8) -> UInt8? {
    switch digit {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): digit - UInt8(ascii: "A") + 10
    default: nil
    }
  }
}
