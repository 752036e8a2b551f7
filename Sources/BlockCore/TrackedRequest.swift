/// The kinds of requests the engine tracks.
public enum TrackedRequestKind: Sendable {
  case read, write, discard, truncate
}

/// A request in flight on a node, with the range it covers (QEMU's
/// `BdrvTrackedRequest`).
///
/// A serialising request widens its overlap range to an alignment; any request
/// whose range overlaps a serialising one (or any request overlapping a
/// serialising request's range, when it is itself serialising) waits until the
/// other ends.
@BlockActor
public final class TrackedRequest {
  /// The request's kind.
  public let kind: TrackedRequestKind
  /// The byte range as issued (after alignment padding).
  public let offset: Int64
  /// Length of that range.
  public let bytes: Int64
  /// The range used for overlap checks; widened by ``serialise(alignment:)``.
  public private(set) var overlapOffset: Int64
  /// Length of the overlap range.
  public private(set) var overlapBytes: Int64
  /// Whether other requests must not overlap this one.
  public private(set) var isSerialising = false
  /// The request this one currently waits for, if any.
  fileprivate(set) var waitingFor: TrackedRequest?
  fileprivate let waiters = BlockWaitQueue()
  fileprivate var finished = false

  init(kind: TrackedRequestKind, offset: Int64, bytes: Int64) {
    self.kind = kind
    self.offset = offset
    self.bytes = bytes
    overlapOffset = offset
    overlapBytes = bytes
  }

  /// Marks the request serialising and widens its overlap range to `alignment`.
  /// Returns whether it was already serialising.
  @discardableResult
  func serialise(alignment: Int64) -> Bool {
    let start = alignDown(offset, alignment)
    let end = alignUp(offset + bytes, alignment)
    let was = isSerialising
    isSerialising = true
    let newStart = min(overlapOffset, start)
    overlapBytes = max(overlapOffset + overlapBytes, end) - newStart
    overlapOffset = newStart
    return was
  }

  func overlaps(_ offset: Int64, _ bytes: Int64) -> Bool {
    offset < overlapOffset + overlapBytes && overlapOffset < offset + bytes
  }

  fileprivate func waitUntilFinished() async {
    if finished { return }
    await waiters.wait()
  }

  fileprivate func finish() {
    finished = true
    waiters.wakeAll()
  }
}

/// The set of requests in flight on one node.
@BlockActor
final class TrackedRequests {
  private var requests: [ObjectIdentifier: TrackedRequest] = [:]
  private(set) var serialisingInFlight = 0

  var isEmpty: Bool { requests.isEmpty }
  var count: Int { requests.count }
  var waitingCount: Int { requests.values.filter { $0.waitingFor != nil }.count }

  func begin(_ kind: TrackedRequestKind, offset: Int64, bytes: Int64) -> TrackedRequest {
    let request = TrackedRequest(kind: kind, offset: offset, bytes: bytes)
    requests[ObjectIdentifier(request)] = request
    return request
  }

  func end(_ request: TrackedRequest) {
    if request.isSerialising { serialisingInFlight -= 1 }
    requests[ObjectIdentifier(request)] = nil
    request.finish()
  }

  /// Marks `request` serialising at `alignment` and waits for the requests it
  /// now conflicts with (QEMU's `bdrv_make_request_serialising`).
  func makeSerialising(_ request: TrackedRequest, alignment: Int64) async {
    if !request.serialise(alignment: alignment) { serialisingInFlight += 1 }
    await waitForConflicts(request)
  }

  /// Waits until no overlapping request conflicts with `request`. A conflicting
  /// request that is itself waiting is skipped: it waits (perhaps indirectly)
  /// for us, and waiting for it would deadlock.
  func waitForConflicts(_ request: TrackedRequest) async {
    guard serialisingInFlight > 0 else { return }
    while let other = firstConflict(for: request) {
      request.waitingFor = other
      await other.waitUntilFinished()
      request.waitingFor = nil
    }
  }

  private func firstConflict(for request: TrackedRequest) -> TrackedRequest? {
    for other in requests.values where other !== request {
      guard other.isSerialising || request.isSerialising else { continue }
      guard other.overlaps(request.overlapOffset, request.overlapBytes) else { continue }
      if other.waitingFor == nil { return other }
    }
    return nil
  }
}

@inlinable func alignDown(_ value: Int64, _ alignment: Int64) -> Int64 {
  value - value % alignment
}

@inlinable func alignUp(_ value: Int64, _ alignment: Int64) -> Int64 {
  alignDown(value + alignment - 1, alignment)
}
