import BlockCore
import BlockDrivers

/// Parses a QEMU option string (`driver=null-co,size=1M`) the way QEMU 7.2's
/// `qemu_opts_parse_noisily` does for `--image-opts` and `open -o`:
///
/// - `key=value` pairs separated by commas; `,,` in a value is a comma;
/// - with `impliedKey`, a first element without `=` is that key's value
///   (`qemu-img --image-opts file.raw` means `file=file.raw`);
/// - otherwise an element without `=` is a flag: `foo` means `foo=on` and
///   `nofoo` means `foo=off`, with QEMU's deprecation warning;
/// - a later key overrides an earlier one.
///
/// Spindle's ``DriverOptions/parse(_:impliedKey:)`` rejects flags; this keeps
/// the tools' behaviour identical to QEMU's.
@BlockActor
func parseOptionString(_ text: String, impliedKey: String? = nil, reporter: Reporter)
  -> DriverOptions
{
  var options = DriverOptions()
  var rest = Substring(text)
  var first = true
  while !rest.isEmpty {
    let nameEnd = rest.firstIndex { $0 == "=" || $0 == "," } ?? rest.endIndex
    if nameEnd == rest.endIndex || rest[nameEnd] != "=" {
      if first, let impliedKey {
        let (value, remainder) = optionValue(rest)
        options[impliedKey] = value
        rest = remainder
      } else {
        var name = String(rest[..<nameEnd])
        var value = "on"
        var prefix = ""
        if name.hasPrefix("no") {
          name.removeFirst(2)
          value = "off"
          prefix = "no"
        }
        if name != "help" && name != "?" {
          reporter.warning("short-form boolean option '\(prefix)\(name)' deprecated")
          reporter.console.writeError("Please use \(name)=\(value) instead\n")
        }
        options[name] = value
        rest = rest[nameEnd...]
      }
    } else {
      let name = String(rest[..<nameEnd])
      let (value, remainder) = optionValue(rest[rest.index(after: nameEnd)...])
      options[name] = value
      rest = remainder
    }
    if rest.first == "," { rest = rest.dropFirst() }
    first = false
  }
  return options
}

/// A value up to the next single comma (`,,` is a literal comma), and what
/// follows it (starting at that comma).
private func optionValue(_ text: Substring) -> (String, Substring) {
  var value = ""
  var index = text.startIndex
  while index < text.endIndex {
    let character = text[index]
    if character == "," {
      let next = text.index(after: index)
      guard next < text.endIndex, text[next] == "," else { break }
      value.append(",")
      index = text.index(after: next)
      continue
    }
    value.append(character)
    index = text.index(after: index)
  }
  return (value, text[index...])
}
