import BlockCore
import BlockTestSupport
import SystemPackage
import Testing

@testable import BlockDrivers

/// The blkdebug filter at the engine level: over a recording node, under raw,
/// and opened from filenames and options.
@Suite("blkdebug driver")
@BlockActor
struct BlkdebugDriverTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  /// blkdebug over a recording node of 1 MiB, optionally under raw.
  struct Stack {
    let top: BlockNode
    let blkdebug: BlockNode
    let driver: BlkdebugDriver
    let recorder: RecordingDriver
  }

  func makeStack(_ rules: [BlkdebugRule], underRaw: Bool = false) async throws -> Stack {
    let recorder = RecordingDriver(size: 1 << 20)
    let child = BlockNode(name: "child", driver: recorder)
    try await child.open()
    let driver = BlkdebugDriver(rules: rules, fileCapabilities: child.capabilities)
    let blkdebug = BlockNode(name: "blkdebug", driver: driver)
    blkdebug.attach(child, role: .file)
    try await blkdebug.open()
    var top = blkdebug
    if underRaw {
      top = BlockNode(name: "raw", driver: RawDriver(fileCapabilities: blkdebug.capabilities))
      top.attach(blkdebug, role: .file)
      try await top.open()
    }
    return Stack(top: top, blkdebug: blkdebug, driver: driver, recorder: recorder)
  }

  @Test("inject-error on pwritev fails writes with the errno; nothing reaches the child")
  func injectOnWrite() async throws {
    let stack = try await makeStack([
      BlkdebugRule(event: .pwritev, action: .injectError(.init(errno: 28)))
    ])
    for _ in 0..<2 {
      let error = await expectBlockError { try await stack.top.write(at: 0, bytes: [1, 2, 3]) }
      #expect(error?.code == .noSpace)
    }
    #expect(stack.recorder.ioCalls.isEmpty)
    // Reads were never activated by pwritev... until a write event happened:
    // the active rule covers reads too (default iotypes).
    let error = await expectBlockError { _ = try await stack.top.read(at: 0, count: 512) }
    #expect(error?.code == .noSpace)
  }

  @Test("once: only the first request after the event fails")
  func once() async throws {
    let stack = try await makeStack([
      BlkdebugRule(event: .pwritev, action: .injectError(.init(once: true)))
    ])
    let error = await expectBlockError { try await stack.top.write(at: 0, bytes: [7]) }
    #expect(error?.code == .ioError)
    try await stack.top.write(at: 0, bytes: [7])
    #expect(stack.recorder.ioCalls == [.write(offset: 0, length: 1, flags: [])])
    #expect(try await stack.top.read(at: 0, count: 1) == [7])
  }

  @Test("set-state: a rule of state 2 acts only after pwritev_done moved to state 2")
  func setState() async throws {
    let stack = try await makeStack([
      BlkdebugRule(event: .pwritev, state: 2, action: .injectError(.init(errno: 1))),
      BlkdebugRule(event: .pwritevDone, state: 1, action: .setState(2)),
    ])
    try await stack.top.write(at: 0, bytes: [UInt8](repeating: 1, count: 512))
    #expect(stack.driver.rules.state == 2)
    let error = await expectBlockError {
      try await stack.top.write(at: 512, bytes: [UInt8](repeating: 2, count: 512))
    }
    #expect(error?.code == .notPermitted)
    #expect(stack.recorder.ioCalls == [.write(offset: 0, length: 512, flags: [])])
  }

  @Test("under raw: read_aio and flush_to_disk events, iotype and sector rules")
  func underRaw() async throws {
    let stack = try await makeStack(
      [
        BlkdebugRule(
          event: .readAIO, action: .injectError(.init(errno: 28, offset: 4096, ioTypes: [.read]))),
        BlkdebugRule(event: .flushToDisk, action: .injectError(.init(ioTypes: [.flush]))),
      ], underRaw: true)
    #expect(try await stack.top.read(at: 0, count: 4096).count == 4096)
    let error = await expectBlockError { _ = try await stack.top.read(at: 4096, count: 512) }
    #expect(error?.code == .noSpace)
    try await stack.top.write(at: 4096, bytes: [1])
    // The flush of raw emits flush_to_disk on blkdebug, which then fails its
    // own flush.
    let flushError = await expectBlockError { try await stack.top.flush() }
    #expect(flushError?.code == .ioError)
  }

  @Test("a breakpoint suspends the request before the child sees it until resumed")
  func breakpoint() async throws {
    let stack = try await makeStack([])
    var messages: [String] = []
    stack.driver.messageHandler = { messages.append($0) }
    try stack.driver.addBreakpoint(event: "pwritev", tag: "A")
    #expect(throws: BlockError.self) { try stack.driver.addBreakpoint(event: "bogus", tag: "B") }
    let top = stack.top
    let write = Task { @BlockActor in try await top.write(at: 0, bytes: [9]) }
    #expect(await stack.driver.waitForSuspension(tag: "A"))
    #expect(stack.driver.isSuspended(tag: "A"))
    #expect(!stack.recorder.ioCalls.contains { if case .write = $0 { true } else { false } })
    #expect(throws: BlockError.self) { try stack.driver.resume(tag: "B") }
    try stack.driver.resume(tag: "A")
    try await write.value
    #expect(!stack.driver.isSuspended(tag: "A"))
    #expect(try await top.read(at: 0, count: 1) == [9])
    #expect(
      messages == ["blkdebug: Suspended request 'A'\n", "blkdebug: Resuming request 'A'\n"])
    // The breakpoint fired once; removing it now fails.
    #expect(throws: BlockError.self) { try stack.driver.removeBreakpoint(tag: "A") }
  }

  @Test("remove_break removes a breakpoint that was not hit; waits can be abandoned")
  func removeBreakpoint() async throws {
    let stack = try await makeStack([])
    try stack.driver.addBreakpoint(event: "pwritev", tag: "A")
    try stack.driver.removeBreakpoint(tag: "A")
    try await stack.top.write(at: 0, bytes: [1])
    let driver = stack.driver
    let wait = Task { @BlockActor in await driver.waitForSuspension(tag: "X") }
    await Task.yield()
    driver.abandonSuspensionWaits()
    #expect(await wait.value == false)
  }

  @Test("limits options override the node's limits; constraints are checked")
  func limits() async throws {
    let node = try await ImageOpener.open(
      filename: nil,
      options: try DriverOptions.parse(
        "driver=blkdebug,image.driver=memory,image.size=1M,align=4k,max-transfer=64k,"
          + "opt-write-zero=8k,max-write-zero=128k,opt-discard=16k,max-discard=256k"))
    #expect(node.limits.requestAlignment == 4096)
    #expect(node.limits.maxTransfer == 65536)
    #expect(node.limits.pwriteZeroesAlignment == 8192)
    #expect(node.limits.maxPwriteZeroes == 131072)
    #expect(node.limits.pdiscardAlignment == 16384)
    #expect(node.limits.maxPdiscard == 262144)
    #expect(node.driver.formatName == "blkdebug")
    #expect(node.length == 1 << 20)
    try await node.write(at: 1, bytes: [5])
    #expect(try await node.read(at: 0, count: 2) == [0, 5])
    await node.close()

    for (options, message) in [
      ("align=3", "Cannot meet constraints with align 3"),
      ("align=4k,max-transfer=6k", "Cannot meet constraints with max-transfer 6144"),
      ("opt-discard=8k,max-discard=12k", "Cannot meet constraints with max-discard 12288"),
    ] {
      let error = await expectBlockError {
        _ = try await ImageOpener.open(
          filename: nil,
          options: try DriverOptions.parse("driver=blkdebug,image.driver=memory,\(options)"))
      }
      #expect(error?.message == message)
    }
  }

  @Test("small zero-writes and discards are refused so the engine falls back")
  func smallZeroWrites() async throws {
    let node = try await ImageOpener.open(
      filename: nil,
      options: try DriverOptions.parse(
        "driver=blkdebug,image.driver=memory,image.size=1M,opt-write-zero=64k"))
    try await node.write(at: 0, bytes: [UInt8](repeating: 3, count: 8192))
    try await node.writeZeroes(at: 0, count: 4096)
    #expect(
      try await node.read(at: 0, count: 8192) == [UInt8](repeating: 0, count: 4096)
        + [UInt8](repeating: 3, count: 4096))
    await node.close()
  }

  @Test("inject-error on the none event is active from the open; sector rules by offset")
  func noneEvent() async throws {
    let node = try await ImageOpener.open(
      filename: nil,
      options: try DriverOptions.parse(
        "driver=blkdebug,image.driver=memory,image.size=1M,inject-error.0.event=none,"
          + "inject-error.0.sector=8,inject-error.0.iotype=read,inject-error.0.errno=5"))
    #expect(try await node.read(at: 0, count: 4096).count == 4096)
    let error = await expectBlockError { _ = try await node.read(at: 4000, count: 100) }
    #expect(error?.code == .ioError)
    try await node.write(at: 4096, bytes: [1])
    await node.close()
  }

  @Test("blkdebug:CONFIG:IMAGE and blkdebug::IMAGE filenames; probing puts raw on top")
  func filenames() async throws {
    let image = try scratch.makeFile("disk.img", bytes: pattern(8192))
    let config = try scratch.makeFile(
      "rules.conf",
      bytes: Array("[inject-error]\nevent = \"read_aio\"\nerrno = \"28\"\nonce = \"on\"\n".utf8))
    let node = try await ImageOpener.open(filename: "blkdebug:\(config):\(image)")
    #expect(node.driver.formatName == "raw")
    #expect(node.file?.driver.formatName == "blkdebug")
    #expect(node.file?.file?.driver.formatName == "file")
    let error = await expectBlockError { _ = try await node.read(at: 0, count: 512) }
    #expect(error?.code == .noSpace)
    #expect(try await node.read(at: 0, count: 512) == Array(pattern(8192)[0..<512]))
    await node.close()

    let plain = try await ImageOpener.open(filename: "blkdebug::\(image)", format: "raw")
    #expect(try await plain.read(at: 100, count: 10) == Array(pattern(8192)[100..<110]))
    await plain.close()

    let missing = await expectBlockError {
      _ = try await ImageOpener.open(filename: "blkdebug:\(image)")
    }
    #expect(missing?.message == "blkdebug requires both config file and image path")
    let noConfig = await expectBlockError {
      _ = try await ImageOpener.open(filename: "blkdebug:/nonexistent/x.conf:\(image)")
    }
    #expect(
      noConfig?.message == "Could not read blkdebug config file: No such file or directory")
  }
}
