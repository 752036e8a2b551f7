import BlockCore

/// A protocol driver for crash tests: an in-memory disk that logs every
/// write, truncate and flush in order, so that a test can rebuild what a
/// disk with a volatile write cache could hold after a crash at any moment.
///
/// A flush makes everything before it durable. Between two flushes the disk
/// may have kept any subset of the writes, in any order, so a crash after
/// flush `k` (and before flush `k + 1` completes) leaves the bytes of every
/// entry before flush `k` plus any subset of the entries between the two;
/// ``image(afterFlush:keeping:)`` builds that image.
@BlockActor
public final class WriteLogDriver: BlockDriver {
  /// One logged request.
  public enum Entry: Sendable, Equatable {
    /// `bytes` written at `offset`.
    case write(offset: Int, bytes: [UInt8])
    /// The disk's length set to `length`.
    case truncate(length: Int)
    /// A completed flush.
    case flush
  }

  /// The disk before the first logged request.
  public let initial: [UInt8]
  /// Every request, in order.
  public private(set) var log: [Entry] = []
  /// The disk as a reader sees it now: every logged request applied.
  public private(set) var current: [UInt8]

  /// A disk holding `bytes`.
  public init(_ bytes: [UInt8]) {
    initial = bytes
    current = bytes
  }

  public nonisolated var formatName: String { "write-log" }
  public var capabilities: DriverCapabilities { DriverCapabilities(kind: .protocolDriver) }

  /// Indexes in ``log`` of the flushes, in order.
  public private(set) var flushIndexes: [Int] = []

  /// The number of flushes logged.
  public var flushCount: Int { flushIndexes.count }

  /// Log entries between flush `flush` (0: the start) and the next one.
  public func window(afterFlush flush: Int) -> Range<Int> {
    let flushes = flushIndexes
    let start = flush == 0 ? 0 : flushes[flush - 1] + 1
    let end = flush < flushes.count ? flushes[flush] : log.count
    return start..<end
  }

  /// The disk after a crash once `flush` flushes had completed (0: none),
  /// keeping the entries of the following window whose position in it
  /// `keep` selects.
  public func image(afterFlush flush: Int, keeping keep: (Int) -> Bool) -> [UInt8] {
    var bytes = initial
    for earlier in 0..<flush { applyWindow(afterFlush: earlier, to: &bytes) { _ in true } }
    applyWindow(afterFlush: flush, to: &bytes, keeping: keep)
    return bytes
  }

  /// Applies to `bytes` the entries of the window after flush `flush` whose
  /// position in it `keep` selects: with every window before applied in
  /// full, the disk after a crash in this window.
  public func applyWindow(
    afterFlush flush: Int, to bytes: inout [UInt8], keeping keep: (Int) -> Bool
  ) {
    let window = window(afterFlush: flush)
    for index in window where keep(index - window.lowerBound) {
      Self.apply(log[index], to: &bytes)
    }
  }

  public func length(_ node: BlockNode) async throws -> Int64 { Int64(current.count) }

  public func read(
    _ node: BlockNode, offset: Int64, length: Int64, into iov: IOVector, flags: RequestFlags
  ) async throws {
    var bytes = [UInt8](repeating: 0, count: Int(length))
    let start = Int(offset)
    let available = max(0, min(current.count - start, Int(length)))
    if available > 0 {
      bytes.replaceSubrange(0..<available, with: current[start..<start + available])
    }
    bytes.withUnsafeBytes { iov.copyIn($0) }
  }

  public func write(
    _ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector, flags: RequestFlags
  ) async throws {
    append(.write(offset: Int(offset), bytes: iov.toArray()))
  }

  public func truncate(
    _ node: BlockNode, to length: Int64, exact: Bool, preallocation: PreallocationMode
  ) async throws {
    append(.truncate(length: Int(length)))
  }

  public func flushToDisk(_ node: BlockNode) async throws {
    flushIndexes.append(log.count)
    log.append(.flush)
  }

  private func append(_ entry: Entry) {
    log.append(entry)
    Self.apply(entry, to: &current)
  }

  private static func apply(_ entry: Entry, to bytes: inout [UInt8]) {
    switch entry {
    case .write(let offset, let data):
      if bytes.count < offset + data.count {
        bytes += [UInt8](repeating: 0, count: offset + data.count - bytes.count)
      }
      bytes.replaceSubrange(offset..<offset + data.count, with: data)
    case .truncate(let length):
      if length < bytes.count {
        bytes.removeSubrange(length...)
      } else {
        bytes += [UInt8](repeating: 0, count: length - bytes.count)
      }
    case .flush:
      break
    }
  }
}
