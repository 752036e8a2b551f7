/// Flags that travel with a request, with QEMU's names and bit values
/// (`BdrvRequestFlags`, QEMU 7.2).
///
/// The engine passes a flag to a driver only when the driver declares support for
/// it (``DriverCapabilities/supportedWriteFlags`` and
/// ``DriverCapabilities/supportedZeroFlags``); otherwise the engine emulates it
/// (FUA becomes a flush) or drops it (MAY_UNMAP is a hint).
public struct RequestFlags: OptionSet, Sendable, Hashable, CustomStringConvertible {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }

  /// Copy data read from the backing chain into this node (copy-on-read).
  public static let copyOnRead = RequestFlags(rawValue: 0x1)
  /// Write zeroes; the request carries no data.
  public static let zeroWrite = RequestFlags(rawValue: 0x2)
  /// A zero-write may deallocate (unmap) the range instead of writing zeroes.
  public static let mayUnmap = RequestFlags(rawValue: 0x4)
  /// Force Unit Access: the data is on stable storage when the request completes.
  public static let fua = RequestFlags(rawValue: 0x10)
  /// Write the data compressed (formats that support it, whole clusters).
  public static let writeCompressed = RequestFlags(rawValue: 0x20)
  /// The write does not change the data the guest sees (e.g. copy-on-read's write).
  public static let writeUnchanged = RequestFlags(rawValue: 0x40)
  /// The request serialises against every overlapping request.
  public static let serialising = RequestFlags(rawValue: 0x80)
  /// Fail with ENOTSUP rather than fall back to a slow path (zero-writes).
  public static let noFallback = RequestFlags(rawValue: 0x100)

  /// Every flag a request may carry.
  public static let all: RequestFlags = [
    .copyOnRead, .zeroWrite, .mayUnmap, .fua, .writeCompressed, .writeUnchanged, .serialising,
    .noFallback,
  ]

  public var description: String {
    let names: [(RequestFlags, String)] = [
      (.copyOnRead, "COPY_ON_READ"), (.zeroWrite, "ZERO_WRITE"), (.mayUnmap, "MAY_UNMAP"),
      (.fua, "FUA"), (.writeCompressed, "WRITE_COMPRESSED"),
      (.writeUnchanged, "WRITE_UNCHANGED"), (.serialising, "SERIALISING"),
      (.noFallback, "NO_FALLBACK"),
    ]
    let set = names.filter { contains($0.0) }.map(\.1)
    return set.isEmpty ? "[]" : "[" + set.joined(separator: ",") + "]"
  }
}
