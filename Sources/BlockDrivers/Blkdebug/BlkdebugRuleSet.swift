import BlockCore

/// blkdebug's rules and state machine (QEMU's `BDRVBlkdebugState` rule lists).
///
/// Rules are kept per event, newest first, as QEMU inserts them. When an event
/// happens, every rule for it whose state matches the current state acts: the
/// matching inject-error rules replace the set of *active* rules (the last
/// processed first), a set-state rule chooses the next state (the last one
/// wins; every rule sees the state from before the event), and breakpoints are
/// removed and returned so that the request can be suspended. Requests then
/// fail with the first active rule that covers them.
public struct BlkdebugRuleSet: Sendable {
  private struct Entry: Sendable {
    let id: Int
    let rule: BlkdebugRule
  }

  /// The current state; 1 after opening.
  public private(set) var state: Int64 = 1
  private var rules: [BlockDebugEvent: [Entry]] = [:]
  private var active: [Entry] = []
  private var nextID = 0

  public init(_ rules: [BlkdebugRule] = []) {
    for rule in rules { add(rule) }
  }

  /// Adds a rule in front of the rules for its event.
  public mutating func add(_ rule: BlkdebugRule) {
    rules[rule.event, default: []].insert(Entry(id: nextID, rule: rule), at: 0)
    nextID += 1
  }

  /// The rules for an event, in the order they act.
  public func rules(for event: BlockDebugEvent) -> [BlkdebugRule] {
    (rules[event] ?? []).map(\.rule)
  }

  /// The inject-error rules a request is checked against, first match first.
  public var activeRules: [BlkdebugRule] { active.map(\.rule) }

  /// Processes an event (QEMU's `blkdebug_debug_event`): returns the tags of
  /// the breakpoints it hit, which are removed.
  public mutating func process(_ event: BlockDebugEvent) -> [String] {
    var newState = state
    var injected = false
    var tags: [String] = []
    for entry in rules[event] ?? [] {
      let rule = entry.rule
      if rule.state != 0 && rule.state != state { continue }
      switch rule.action {
      case .injectError:
        if !injected {
          active = []
          injected = true
        }
        active.insert(entry, at: 0)
      case .setState(let next):
        newState = next
      case .suspend(let tag):
        tags.append(tag)
        remove(entry.id)
      }
    }
    state = newState
    return tags
  }

  /// The error a request fails with, if an active rule covers it (QEMU's
  /// `rule_check`); a `once` rule is removed when it fires.
  public mutating func check(offset: Int64, bytes: Int64, type: BlkdebugIOType)
    -> BlkdebugRule.InjectError?
  {
    for entry in active {
      guard case .injectError(let inject) = entry.rule.action,
        inject.matches(offset: offset, bytes: bytes, type: type)
      else { continue }
      guard inject.errno != 0 else { return nil }
      if inject.once {
        active.removeAll { $0.id == entry.id }
        remove(entry.id)
      }
      return inject
    }
    return nil
  }

  /// Removes the breakpoints tagged `tag`; returns whether there was one.
  public mutating func removeBreakpoints(tag: String) -> Bool {
    var found = false
    for (event, entries) in rules {
      let kept = entries.filter { $0.rule.action != .suspend(tag: tag) }
      if kept.count != entries.count {
        found = true
        rules[event] = kept
      }
    }
    return found
  }

  private mutating func remove(_ id: Int) {
    for (event, entries) in rules where entries.contains(where: { $0.id == id }) {
      rules[event] = entries.filter { $0.id != id }
    }
  }
}
