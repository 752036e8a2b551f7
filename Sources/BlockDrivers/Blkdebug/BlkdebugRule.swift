import BlockCore

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// The kinds of request an inject-error rule applies to (QEMU's
/// `BlkdebugIOType`).
public enum BlkdebugIOType: String, Sendable, CaseIterable {
  case read
  case write
  case writeZeroes = "write-zeroes"
  case discard
  case flush
  case blockStatus = "block-status"

  /// The types a rule without `iotype` applies to: everything but block status.
  public static let defaultTypes: Set<BlkdebugIOType> = [
    .read, .write, .writeZeroes, .discard, .flush,
  ]
}

/// One blkdebug rule: on `event`, while the state is `state` (0 = any state),
/// take `action`.
public struct BlkdebugRule: Sendable, Equatable {
  /// What an inject-error rule does once an event activated it.
  public struct InjectError: Sendable, Equatable {
    /// The errno the failed request returns (`errno`, default EIO); 0 never
    /// fails a request.
    public var errno: Int32 = EIO
    /// Whether the rule is removed after failing one request (`once`).
    public var once = false
    /// Whether the request fails without first yielding (`immediately`).
    public var immediately = false
    /// The byte offset a request must cover to fail (`sector` × 512), or nil
    /// for every request.
    public var offset: Int64?
    /// The request types that fail (`iotype`).
    public var ioTypes: Set<BlkdebugIOType> = BlkdebugIOType.defaultTypes

    public init(
      errno: Int32 = EIO, once: Bool = false, immediately: Bool = false, offset: Int64? = nil,
      ioTypes: Set<BlkdebugIOType> = BlkdebugIOType.defaultTypes
    ) {
      self.errno = errno
      self.once = once
      self.immediately = immediately
      self.offset = offset
      self.ioTypes = ioTypes
    }

    /// Whether a request of `type` over `bytes` bytes at `offset` is affected.
    func matches(offset requestOffset: Int64, bytes: Int64, type: BlkdebugIOType) -> Bool {
      guard ioTypes.contains(type) else { return false }
      guard let offset else { return true }
      return bytes > 0 && offset >= requestOffset && offset < requestOffset + bytes
    }
  }

  /// What a rule does.
  public enum Action: Sendable, Equatable {
    /// Activate error injection for later requests (`[inject-error]`).
    case injectError(InjectError)
    /// Move to another state (`[set-state]`).
    case setState(Int64)
    /// Suspend the request that emitted the event (a breakpoint), tagged.
    case suspend(tag: String)
  }

  /// The event that triggers the rule.
  public var event: BlockDebugEvent
  /// The state the rule applies in; 0 means every state.
  public var state: Int64
  /// What the rule does.
  public var action: Action

  public init(event: BlockDebugEvent, state: Int64 = 0, action: Action) {
    self.event = event
    self.state = state
    self.action = action
  }
}
