import BlockCore
import BlockDrivers
import Foundation

@testable import SpindleCLI

/// `json:` pseudo-filenames and option strings: QEMU's JSON reader, the
/// flattening of `json:{...}` into driver options, `key=value` strings and
/// the tools' option-string parser (with flags and an implied key).
///
/// Invariants: every parser either returns or throws its own error type; a
/// parsed JSON value, written out again, parses to the same value; parsed
/// options, written out again as `key=value,...`, parse to the same options.
enum OptionsTarget {
  static func run(_ input: [UInt8]) {
    guard input.count <= 1 << 16 else { return }
    let text = String(decoding: input, as: UTF8.self)
    checkJSON(text)
    checkOptionString(text)
    runBlocking { await checkToolOptionString(text) }
  }

  static func checkJSON(_ text: String) {
    // A number too large for a double parses as infinity (as QEMU's
    // strtod-based reader does), which JSON text cannot write back.
    if let value = try? QEMUJSON.parse(text), JSONWriter.isWritable(value) {
      let written = JSONWriter.write(value)
      do {
        let again = try QEMUJSON.parse(written)
        fuzzCheck(again == value, "JSON round trip changed the value: \(written)")
      } catch {
        fuzzCheck(false, "the JSON written for a parsed value does not parse: \(written): \(error)")
      }
    }
    do {
      _ = try DriverOptions.parseJSON(text)
    } catch is BlockError {
    } catch {
      fuzzCheck(false, "parseJSON threw a non-BlockError: \(error)")
    }
  }

  static func checkOptionString(_ text: String) {
    let options: DriverOptions
    do {
      options = try DriverOptions.parse(text)
    } catch is BlockError {
      return
    } catch {
      fuzzCheck(false, "DriverOptions.parse threw a non-BlockError: \(error)")
      return
    }
    let written = OptionStringWriter.write(options)
    do {
      let again = try DriverOptions.parse(written)
      fuzzCheck(again == options, "option string round trip changed the options: \(written)")
    } catch {
      fuzzCheck(false, "the option string written for parsed options does not parse: \(written)")
    }
    _ = try? DriverOptions.parse(text, impliedKey: "file")
  }

  @BlockActor
  static func checkToolOptionString(_ text: String) async {
    let reporter = Reporter(console: Console.capture(), programName: "qemu-img")
    _ = parseOptionString(text, reporter: reporter)
    _ = parseOptionString(text, impliedKey: "file", reporter: reporter)
  }
}

/// Writes a ``QEMUJSONValue`` as JSON text QEMU's reader accepts.
enum JSONWriter {
  static func write(_ value: QEMUJSONValue) -> String {
    switch value {
    case .object(let members):
      "{" + members.map { quoted($0.key) + ": " + write($0.value) }.joined(separator: ", ") + "}"
    case .array(let items): "[" + items.map(write).joined(separator: ", ") + "]"
    case .string(let text): quoted(text)
    case .int(let number): String(number)
    case .uint(let number): String(number)
    case .double(let number): double(number)
    case .bool(let flag): flag ? "true" : "false"
    case .null: "null"
    }
  }

  /// Whether every number in `value` is finite.
  static func isWritable(_ value: QEMUJSONValue) -> Bool {
    switch value {
    case .object(let members): members.allSatisfy { isWritable($0.value) }
    case .array(let items): items.allSatisfy(isWritable)
    case .double(let number): number.isFinite
    default: true
    }
  }

  /// A double in a form that reads back as a double (never as an integer).
  static func double(_ number: Double) -> String {
    let text = String(format: "%.17g", number)
    return text.contains(where: { ".eEin".contains($0) }) ? text : text + ".0"
  }

  static func quoted(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
      switch scalar {
      case "\"": out += "\\\""
      case "\\": out += "\\\\"
      case _ where scalar.value < 0x20 || scalar.value == 0x7f:
        out += String(format: "\\u%04x", scalar.value)
      default: out.unicodeScalars.append(scalar)
      }
    }
    return out + "\""
  }
}

/// Writes ``DriverOptions`` as a `key=value,...` string (commas in values
/// doubled; keys, as in QEMU, hold no commas and are written as they are).
enum OptionStringWriter {
  static func write(_ options: DriverOptions) -> String {
    options.values.sorted { $0.key < $1.key }.map {
      $0.key + "=" + escape($0.value)
    }.joined(separator: ",")
  }

  static func escape(_ text: String) -> String {
    text.replacingOccurrences(of: ",", with: ",,")
  }
}
