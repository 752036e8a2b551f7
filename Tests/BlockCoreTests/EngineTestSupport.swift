import BlockCore
import BlockDrivers
import BlockTestSupport
import Testing

// Shared pieces of the engine's "exact child requests" tests: sizes, driver
// capabilities, buffers, a way to hold chosen driver calls, a bounded wait for
// engine state, and two small drivers for what RecordingDriver does not record
// (plug/unplug, vmstate) or cannot be (a format or filter over a file child).

/// Every engine test suite nests in this one, so that the suites run one at a
/// time: ``BlockGraph/drainAll()`` and drained sections reach every live node,
/// and a test holding requests at a gate must not stall another test's drain.
@Suite(.serialized)
enum EngineTests {}

let kib: Int64 = 1024
let mib: Int64 = 1024 * kib
let gib: Int64 = 1024 * mib

/// The recording driver's default capabilities (a protocol driver with block
/// status and backing semantics, no zero-writes, no FUA), adjusted by `change`.
func recordingCapabilities(_ change: (inout DriverCapabilities) -> Void = { _ in })
  -> DriverCapabilities
{
  var capabilities = DriverCapabilities(kind: .protocolDriver)
  capabilities.hasBlockStatus = true
  capabilities.supportsBacking = true
  change(&capabilities)
  return capabilities
}

/// Limits with the given fields set; everything else at BlockLimits' defaults.
func limits(
  maxTransfer: Int64 = 0, pwriteZeroesAlignment: Int64 = 0, maxPwriteZeroes: Int64 = 0,
  pdiscardAlignment: Int64 = 0, maxPdiscard: Int64 = 0
) -> BlockLimits {
  var limits = BlockLimits()
  limits.maxTransfer = maxTransfer
  limits.pwriteZeroesAlignment = pwriteZeroesAlignment
  limits.maxPwriteZeroes = maxPwriteZeroes
  limits.pdiscardAlignment = pdiscardAlignment
  limits.maxPdiscard = maxPdiscard
  return limits
}

/// `count` bytes that are never zero; patterns of different seeds (1...9)
/// differ at every offset.
func pattern(_ count: Int64, seed: Int = 1) -> [UInt8] {
  (0..<Int(count)).map { UInt8(($0 + seed * 37) % 251 + 1) }
}

/// `count` zero bytes.
func zeroes(_ count: Int64) -> [UInt8] { [UInt8](repeating: 0, count: Int(count)) }

extension DriverCall {
  var isRead: Bool { if case .read = self { true } else { false } }
  var isWrite: Bool { if case .write = self { true } else { false } }
  var isWriteZeroes: Bool { if case .writeZeroes = self { true } else { false } }
  var isDiscard: Bool { if case .discard = self { true } else { false } }
}

/// Holds the first driver call that matches at a ``Gate``. Install it with
/// ``install(on:)``; the driver keeps the holder, the holder does not keep the
/// driver.
@BlockActor
final class CallHolder {
  let gate = Gate()
  private var holding = true
  private let matches: @BlockActor (DriverCall) -> Bool

  init(_ matches: @escaping @BlockActor (DriverCall) -> Bool) {
    self.matches = matches
  }

  func install(on driver: RecordingDriver) {
    driver.interceptor = { [self] call in await self.intercept(call) }
  }

  private func intercept(_ call: DriverCall) async {
    guard holding, matches(call) else { return }
    holding = false
    await gate.hold()
  }
}

/// Fails every driver call that matches with `error`.
@BlockActor
func failCalls(
  on driver: RecordingDriver, with error: BlockError,
  where matches: @escaping @BlockActor (DriverCall) -> Bool
) {
  driver.interceptor = { call in if matches(call) { throw error } }
}

struct TimedOut: Error, CustomStringConvertible {
  let what: String
  var description: String { "gave up waiting until \(what)" }
}

/// Lets the other tasks on ``BlockActor`` run until `condition` holds. Engine
/// state (in-flight counts, quiesce counters, recorded calls) changes only when
/// a task runs on the actor, so this waits for an event, not for time; it
/// throws rather than hang when the event never comes.
@BlockActor
func waitUntil(_ what: String, _ condition: @BlockActor () -> Bool) async throws {
  for _ in 0..<100_000 {
    if condition() { return }
    await Task.yield()
  }
  throw TimedOut(what: what)
}

/// Yields to the other tasks on ``BlockActor`` many times. Only for checking
/// that something does *not* happen (a held request stays held): no outcome
/// depends on how long this takes.
@BlockActor
func letOtherTasksRun() async {
  for _ in 0..<1000 { await Task.yield() }
}

/// What the test drivers below saw, across nodes, in order.
@BlockActor
final class EventLog {
  private(set) var events: [String] = []
  func append(_ event: String) { events.append(event) }
}

/// A protocol driver that logs plug, unplug and vmstate calls, and keeps a VM
/// state area when `vmstateArea` is set (otherwise it has none, so the engine
/// must look elsewhere).
@BlockActor
final class EventDriver: BlockDriver {
  let name: String
  let log: EventLog
  var vmstateArea: [UInt8]?

  init(name: String, log: EventLog, vmstateArea: [UInt8]? = nil) {
    self.name = name
    self.log = log
    self.vmstateArea = vmstateArea
  }

  nonisolated var formatName: String { "event" }
  var capabilities: DriverCapabilities { DriverCapabilities(kind: .protocolDriver) }

  func length(_ node: BlockNode) async throws -> Int64 { 64 * kib }

  func read(
    _ node: BlockNode, offset: Int64, length: Int64, into iov: IOVector, flags: RequestFlags
  ) async throws {
    iov.fill(0)
  }

  func write(
    _ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector, flags: RequestFlags
  ) async throws {}

  func plug(_ node: BlockNode) { log.append("\(name).plug") }
  func unplug(_ node: BlockNode) { log.append("\(name).unplug") }

  func vmstate(_ node: BlockNode, offset: Int64, iov: IOVector, isLoad: Bool) async throws {
    guard var area = vmstateArea else { throw BlockError.notSupported() }
    log.append("\(name).\(isLoad ? "load" : "save")(\(offset), \(iov.count))")
    guard offset >= 0, offset + Int64(iov.count) <= Int64(area.count) else {
      throw BlockError(.invalidArgument, "outside the VM state area")
    }
    let range = Int(offset)..<Int(offset) + iov.count
    if isLoad {
      area[range].withUnsafeBytes { iov.copyIn($0) }
    } else {
      area.withUnsafeMutableBytes { bytes in
        iov.copyOut(to: UnsafeMutableRawBufferPointer(rebasing: bytes[range]))
      }
      vmstateArea = area
    }
  }
}

/// A format or filter over a file child, mapping guest offset N to file offset
/// N. As a format it answers block status itself with DATA | OFFSET_VALID |
/// RECURSE (as qcow2 does for a preallocated cluster), so the engine must ask
/// the file whether the data is a hole; as a filter it leaves block status to
/// the engine's default (RAW: ask the file). Its length may exceed the file's.
@BlockActor
final class MappingDriver: BlockDriver {
  let capabilities: DriverCapabilities
  private let size: Int64?

  init(kind: DriverKind, length: Int64? = nil) {
    var capabilities = DriverCapabilities(kind: kind)
    capabilities.hasBlockStatus = kind == .format
    self.capabilities = capabilities
    size = length
  }

  nonisolated var formatName: String { "mapping" }

  func length(_ node: BlockNode) async throws -> Int64 {
    if let size { return size }
    return node.file?.length ?? 0
  }

  func read(
    _ node: BlockNode, offset: Int64, length: Int64, into iov: IOVector, flags: RequestFlags
  ) async throws {
    try await node.file!.read(at: offset, into: iov)
  }

  func write(
    _ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector, flags: RequestFlags
  ) async throws {
    try await node.file!.write(at: offset, from: iov, flags: flags)
  }

  func blockStatus(_ node: BlockNode, wantZero: Bool, offset: Int64, length: Int64)
    async throws -> BlockStatus
  {
    BlockStatus(
      flags: [.data, .offsetValid, .recurse], count: length, mapOffset: offset, file: node.file)
  }
}

/// A node over a ``MappingDriver`` with `file` as its file child, opened.
@BlockActor
func makeMappingNode(over file: BlockNode, kind: DriverKind, length: Int64? = nil) async throws
  -> BlockNode
{
  let node = BlockNode(name: "mapping", driver: MappingDriver(kind: kind, length: length))
  node.attach(file, role: .file)
  try await node.open()
  return node
}

/// A vector holding a copy of `bytes`.
func vector(_ bytes: [UInt8]) -> IOVector {
  let iov = IOVector(allocating: bytes.count)
  bytes.withUnsafeBytes { iov.copyIn($0) }
  return iov
}
