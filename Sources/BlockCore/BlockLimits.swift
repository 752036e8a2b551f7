/// The I/O limits of a node, in bytes (QEMU's `BlockLimits`).
///
/// A zero means "no limit" (for maxima) or "no preference" (for optimal sizes).
/// A node starts from defaults that depend on its driver (byte-granular drivers
/// get a request alignment of 1, sector drivers 512), merges its children's
/// limits (``merge(_:)``), then lets its driver override them
/// (``BlockDriver/refreshLimits(_:node:)``).
public struct BlockLimits: Sendable, Equatable {
  /// Every request reaching the driver is aligned to this (offset and length),
  /// except that the last request may end at the node's unaligned end of file.
  /// A power of two.
  public var requestAlignment: Int64 = 1
  /// Largest read or write the driver accepts in one call; 0 = unlimited.
  public var maxTransfer: Int64 = 0
  /// Preferred transfer size; 0 = none.
  public var optTransfer: Int64 = 0
  /// Alignment the driver prefers for zero-writes; 0 = the request alignment.
  public var pwriteZeroesAlignment: Int64 = 0
  /// Largest zero-write the driver accepts in one call; 0 = unlimited.
  public var maxPwriteZeroes: Int64 = 0
  /// Alignment of discard requests; 0 = the request alignment.
  public var pdiscardAlignment: Int64 = 0
  /// Largest discard the driver accepts in one call; 0 = unlimited.
  public var maxPdiscard: Int64 = 0
  /// Minimal buffer memory alignment the driver needs (O_DIRECT).
  public var minMemAlignment: Int = 1
  /// Buffer memory alignment the driver prefers.
  public var optMemAlignment: Int = 1
  /// Largest number of segments in one vectored request; 0 = unlimited.
  public var maxIOV: Int = 0

  /// Creates limits with QEMU's neutral defaults.
  public init() {}

  /// Takes the limits a parent inherits from a child (QEMU's
  /// `bdrv_merge_limits`): the larger optimal sizes and memory alignments, the
  /// smaller non-zero maxima.
  public mutating func merge(_ child: BlockLimits) {
    optTransfer = max(optTransfer, child.optTransfer)
    maxTransfer = Self.minNonZero(maxTransfer, child.maxTransfer)
    optMemAlignment = max(optMemAlignment, child.optMemAlignment)
    minMemAlignment = max(minMemAlignment, child.minMemAlignment)
    maxIOV = Int(Self.minNonZero(Int64(maxIOV), Int64(child.maxIOV)))
  }

  /// The smaller of two values, where zero means "no limit".
  public static func minNonZero(_ a: Int64, _ b: Int64) -> Int64 {
    if a == 0 { return b }
    if b == 0 { return a }
    return min(a, b)
  }
}
