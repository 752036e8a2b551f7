import BlockCore

/// blkdebug's rule sources: a configuration file in QEMU's config syntax and
/// `inject-error.*` / `set-state.*` options (QEMU's `read_config`).
///
/// A configuration file holds sections such as
///
///     # comment
///     [inject-error]
///     event = "pwritev"
///     errno = "28"
///     once = "on"
///
///     [set-state]
///     event = "flush_to_disk"
///     state = "1"
///     new_state = "2"
///
/// Options either give one section (`inject-error.event=pwritev`) or a list
/// (`inject-error.0.event=pwritev,inject-error.1.event=...`).
public enum BlkdebugConfig {
  /// A section: its group (`inject-error` or `set-state`) and its options.
  public struct Section: Sendable, Equatable {
    public var group: String
    public var options: [String: String]

    public init(group: String, options: [String: String]) {
      self.group = group
      self.options = options
    }
  }

  /// The sections blkdebug knows and the options each accepts.
  static let groups: [String: Set<String>] = [
    "inject-error": ["event", "state", "iotype", "errno", "sector", "once", "immediately"],
    "set-state": ["event", "state", "new_state"],
  ]

  static let parseError = BlockError(.invalidArgument, "parse error")

  /// Parses a configuration file's text (QEMU's `qemu_config_parse`): blank
  /// lines and lines starting with `#` are skipped, `[group]` (or
  /// `[group "id"]`) starts a section, `key = "value"` sets an option. As in
  /// QEMU, a line that is not `key = "value"` sets its first word to an
  /// empty value.
  public static func parseFile(_ text: String) throws -> [Section] {
    var sections: [Section] = []
    for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
      if rawLine.isEmpty || rawLine.hasPrefix("#") { continue }
      let line = rawLine.trimmingLeadingBlanks()
      if line.hasPrefix("[") {
        guard let close = line.firstIndex(of: "]") else { throw parseError }
        var name = String(line[line.index(after: line.startIndex)..<close])
        // `[group "id"]`: the id is ignored, as blkdebug's groups have none.
        if let space = name.firstIndex(of: " ") { name = String(name[..<space]) }
        guard groups[name] != nil else {
          throw BlockError(.invalidArgument, "There is no option group '\(name)'")
        }
        sections.append(Section(group: name, options: [:]))
        continue
      }
      // QEMU scans `KEY = "VALUE"`; a line that only starts with a word is
      // still taken as that word with an empty value.
      let wordEnd = line.firstIndex { $0 == " " || $0 == "\t" || $0 == "\r" } ?? line.endIndex
      let key = String(line[..<wordEnd])
      guard !key.isEmpty else { throw parseError }
      var value = ""
      let rest = line[wordEnd...].trimmingLeadingBlanks()
      if rest.hasPrefix("=") {
        let quoted = rest.dropFirst().trimmingLeadingBlanks()
        if quoted.hasPrefix("\""), let close = quoted.dropFirst().firstIndex(of: "\"") {
          value = String(quoted[quoted.index(after: quoted.startIndex)..<close])
        }
      }
      guard var section = sections.popLast() else {
        throw BlockError(.invalidArgument, "no group defined")
      }
      guard groups[section.group]!.contains(key) else {
        throw BlockError(.invalidArgument, "Invalid parameter '\(key)'")
      }
      section.options[key] = value
      sections.append(section)
    }
    return sections
  }

  /// Takes the `inject-error` and `set-state` options out of `options` (QEMU's
  /// `qemu_config_parse_qdict`).
  public static func takeSections(_ options: inout DriverOptions) throws -> [Section] {
    var sections: [Section] = []
    for group in ["inject-error", "set-state"] {
      let child = options.takeChild(group).values
      if child.isEmpty { continue }
      let known = groups[group]!
      if child.keys.contains(where: { known.contains($0) }) {
        // The single-section form.
        if let unknown = child.keys.sorted().first(where: { !known.contains($0) }) {
          throw BlockError(
            .invalidArgument, "[\(group)] section doesn't support the option '\(unknown)'")
        }
        sections.append(Section(group: group, options: child))
        continue
      }
      var indexed: [Int: [String: String]] = [:]
      for (key, value) in child {
        let parts = key.split(separator: ".", maxSplits: 1)
        guard parts.count == 2, let index = Int(parts[0]), index >= 0 else {
          throw BlockError(.invalidArgument, "Invalid parameter '\(group).\(key)'")
        }
        indexed[index, default: [:]][String(parts[1])] = value
      }
      for index in 0..<indexed.count {
        guard let section = indexed[index] else {
          throw BlockError(.invalidArgument, "Invalid parameter '\(group).\(indexed.count)'")
        }
        if let unknown = section.keys.sorted().first(where: { !known.contains($0) }) {
          throw BlockError(
            .invalidArgument, "[\(group)] section doesn't support the option '\(unknown)'")
        }
        sections.append(Section(group: group, options: section))
      }
    }
    return sections
  }

  /// The rules of the sections, in the order QEMU adds them: every
  /// inject-error section, then every set-state section.
  public static func rules(from sections: [Section]) throws -> [BlkdebugRule] {
    let ordered =
      sections.filter { $0.group == "inject-error" } + sections.filter { $0.group == "set-state" }
    return try ordered.map(rule(from:))
  }

  /// One section's rule (QEMU's `add_rule`).
  static func rule(from section: Section) throws -> BlkdebugRule {
    var options = DriverOptions(section.options)
    guard let eventName = options.take("event") else {
      throw BlockError(.invalidArgument, "Missing event name for rule")
    }
    guard let event = BlockDebugEvent(rawValue: eventName) else {
      throw BlockError(.invalidArgument, "invalid parameter value: \(eventName)")
    }
    let state = try options.takeInt("state") ?? 0
    if section.group == "set-state" {
      let newState = try options.takeInt("new_state") ?? 0
      return BlkdebugRule(event: event, state: state, action: .setState(newState))
    }
    var inject = BlkdebugRule.InjectError()
    if let errno = try options.takeInt("errno") { inject.errno = Int32(truncatingIfNeeded: errno) }
    inject.once = try options.takeBool("once", default: false)
    inject.immediately = try options.takeBool("immediately", default: false)
    if let sector = try options.takeInt("sector"), sector != -1 { inject.offset = sector * 512 }
    if let name = options.take("iotype") {
      guard let type = BlkdebugIOType(rawValue: name) else {
        throw BlockError(.invalidArgument, "invalid parameter value: \(name)")
      }
      inject.ioTypes = [type]
    }
    return BlkdebugRule(event: event, state: state, action: .injectError(inject))
  }
}

extension Substring {
  fileprivate func trimmingLeadingBlanks() -> Substring {
    drop { $0 == " " || $0 == "\t" || $0 == "\r" }
  }

  fileprivate func trimmingBlanks() -> String {
    var text = trimmingLeadingBlanks()
    while let last = text.last, last == " " || last == "\t" || last == "\r" {
      text = text.dropLast()
    }
    return String(text)
  }
}
