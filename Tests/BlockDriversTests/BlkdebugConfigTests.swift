import BlockCore
import BlockDrivers
import SystemPackage
import Testing

/// blkdebug's rule sources (config files, options) and its rule matching and
/// state machine, without any node.
@Suite("blkdebug configuration and rules")
struct BlkdebugConfigTests {
  @Test("a config file gives inject-error and set-state sections; comments and blanks are skipped")
  func configFile() throws {
    let text = """
      # inject an error
      [inject-error]
      event = "pwritev"
      errno = "28"
      once = "on"
        sector = "8"

      [set-state]
      event = "flush_to_disk"
      state = "1"
      new_state = "2"
      """
    let sections = try BlkdebugConfig.parseFile(text)
    #expect(
      sections == [
        .init(
          group: "inject-error",
          options: ["event": "pwritev", "errno": "28", "once": "on", "sector": "8"]),
        .init(
          group: "set-state", options: ["event": "flush_to_disk", "state": "1", "new_state": "2"]),
      ])
    let rules = try BlkdebugConfig.rules(from: sections)
    #expect(
      rules == [
        BlkdebugRule(
          event: .pwritev,
          action: .injectError(.init(errno: 28, once: true, offset: 4096))),
        BlkdebugRule(event: .flushToDisk, state: 1, action: .setState(2)),
      ])
  }

  @Test(
    "QEMU's messages for bad config files",
    arguments: [
      ("[bogus]\nevent = \"pwritev\"", "There is no option group 'bogus'"),
      ("[inject-error]\nbogus = \"1\"", "Invalid parameter 'bogus'"),
      ("event = \"pwritev\"", "no group defined"),
      ("[inject-error]\n   ", "parse error"),
    ])
  func badConfigFiles(_ text: String, _ message: String) {
    #expect(throws: BlockError(.invalidArgument, message)) { try BlkdebugConfig.parseFile(text) }
  }

  @Test("an unquoted value reads as empty, as QEMU's scanner leaves it")
  func unquotedValue() throws {
    let sections = try BlkdebugConfig.parseFile("[inject-error]\nevent = pwritev\n")
    #expect(sections == [.init(group: "inject-error", options: ["event": ""])])
    #expect(throws: BlockError(.invalidArgument, "invalid parameter value: ")) {
      try BlkdebugConfig.rules(from: sections)
    }
  }

  @Test("options give one section or a numbered list; inject-error rules come before set-state")
  func optionSections() throws {
    var single = DriverOptions(["inject-error.event": "read_aio", "image": "x"])
    #expect(
      try BlkdebugConfig.takeSections(&single) == [
        .init(group: "inject-error", options: ["event": "read_aio"])
      ])
    #expect(single.values == ["image": "x"])

    var list = DriverOptions([
      "set-state.0.event": "pwritev", "set-state.0.new_state": "3",
      "inject-error.1.event": "flush_to_os", "inject-error.1.iotype": "flush",
      "inject-error.0.event": "pwritev_done", "inject-error.0.immediately": "on",
    ])
    let rules = try BlkdebugConfig.rules(from: try BlkdebugConfig.takeSections(&list))
    #expect(
      rules == [
        BlkdebugRule(event: .pwritevDone, action: .injectError(.init(immediately: true))),
        BlkdebugRule(event: .flushToOS, action: .injectError(.init(ioTypes: [.flush]))),
        BlkdebugRule(event: .pwritev, action: .setState(3)),
      ])
    #expect(list.isEmpty)
  }

  @Test("QEMU's messages for bad rules")
  func badRules() {
    func message(_ options: [String: String]) -> String? {
      var options = DriverOptions(options)
      do {
        _ = try BlkdebugConfig.rules(from: try BlkdebugConfig.takeSections(&options))
      } catch let error as BlockError {
        return error.message
      } catch {
        return "\(error)"
      }
      return nil
    }
    #expect(message(["inject-error.0.errno": "5"]) == "Missing event name for rule")
    #expect(message(["inject-error.0.event": "foo"]) == "invalid parameter value: foo")
    #expect(
      message(["inject-error.0.event": "none", "inject-error.0.iotype": "bar"])
        == "invalid parameter value: bar")
    #expect(
      message(["inject-error.0.xx": "5"])
        == "[inject-error] section doesn't support the option 'xx'")
    #expect(
      message(["inject-error.0.event": "none", "inject-error.0.once": "maybe"])
        == "Parameter 'once' expects 'on' or 'off'")
  }

  @Test("an event activates its inject-error rules; requests fail by offset and type")
  func matching() {
    var rules = BlkdebugRuleSet([
      BlkdebugRule(event: .pwritev, action: .injectError(.init(errno: 28, offset: 4096))),
      BlkdebugRule(event: .pwritev, action: .injectError(.init(errno: 5, ioTypes: [.flush]))),
    ])
    #expect(rules.check(offset: 0, bytes: 8192, type: .write) == nil)
    #expect(rules.process(.pwritev) == [])
    #expect(rules.check(offset: 0, bytes: 4096, type: .write) == nil)
    #expect(rules.check(offset: 0, bytes: 4097, type: .write)?.errno == 28)
    #expect(rules.check(offset: 4096, bytes: 512, type: .read)?.errno == 28)
    #expect(rules.check(offset: 4096, bytes: 512, type: .blockStatus) == nil)
    #expect(rules.check(offset: 0, bytes: 0, type: .flush)?.errno == 5)
    // Not once: the rules stay.
    #expect(rules.check(offset: 4096, bytes: 512, type: .read)?.errno == 28)
  }

  @Test("once rules fire once and are removed; errno 0 never fails")
  func onceAndZero() {
    var rules = BlkdebugRuleSet([
      BlkdebugRule(event: .readAIO, action: .injectError(.init(once: true)))
    ])
    _ = rules.process(.readAIO)
    #expect(rules.check(offset: 0, bytes: 512, type: .read)?.errno == Errno.ioError.rawValue)
    #expect(rules.check(offset: 0, bytes: 512, type: .read) == nil)
    #expect(rules.rules(for: .readAIO).isEmpty)
    _ = rules.process(.readAIO)
    #expect(rules.check(offset: 0, bytes: 512, type: .read) == nil)

    var zero = BlkdebugRuleSet([
      BlkdebugRule(event: .readAIO, action: .injectError(.init(errno: 0)))
    ])
    _ = zero.process(.readAIO)
    #expect(zero.check(offset: 0, bytes: 512, type: .read) == nil)
  }

  @Test("states: rules act only in their state; set-state applies after the event")
  func states() {
    var rules = BlkdebugRuleSet([
      BlkdebugRule(event: .pwritev, state: 2, action: .injectError(.init())),
      BlkdebugRule(event: .pwritevDone, state: 1, action: .setState(2)),
      BlkdebugRule(event: .pwritevDone, state: 2, action: .setState(3)),
    ])
    #expect(rules.state == 1)
    _ = rules.process(.pwritev)
    #expect(rules.activeRules.isEmpty)
    _ = rules.process(.pwritevDone)
    // Both set-state rules saw state 1: only the first applied.
    #expect(rules.state == 2)
    _ = rules.process(.pwritev)
    #expect(rules.activeRules.count == 1)
    _ = rules.process(.pwritevDone)
    #expect(rules.state == 3)
  }

  @Test("breakpoints are returned by the event they stop at and removed, newest first")
  func breakpoints() {
    var rules = BlkdebugRuleSet()
    rules.add(BlkdebugRule(event: .pwritev, action: .suspend(tag: "A")))
    rules.add(BlkdebugRule(event: .pwritev, action: .suspend(tag: "B")))
    rules.add(BlkdebugRule(event: .flushToOS, action: .suspend(tag: "C")))
    #expect(rules.process(.pwritev) == ["B", "A"])
    #expect(rules.process(.pwritev) == [])
    let removed = rules.removeBreakpoints(tag: "C")
    let removedAgain = rules.removeBreakpoints(tag: "C")
    #expect(removed && !removedAgain)
    #expect(rules.process(.flushToOS) == [])
  }
}
