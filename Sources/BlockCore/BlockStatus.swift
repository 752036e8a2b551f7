/// Allocation status flags of a range (QEMU's `BDRV_BLOCK_*`).
public struct BlockStatusFlags: OptionSet, Sendable, Hashable {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }

  /// The range reads data stored in this node (or, with RAW, below it).
  public static let data = BlockStatusFlags(rawValue: 0x01)
  /// The range reads as zeroes.
  public static let zero = BlockStatusFlags(rawValue: 0x02)
  /// ``BlockStatus/mapOffset`` and ``BlockStatus/file`` say where the data is.
  public static let offsetValid = BlockStatusFlags(rawValue: 0x04)
  /// The driver defers to its file child at ``BlockStatus/mapOffset``
  /// (formats without metadata, such as raw); the engine resolves it.
  public static let raw = BlockStatusFlags(rawValue: 0x08)
  /// The content comes from this node rather than its backing chain.
  public static let allocated = BlockStatusFlags(rawValue: 0x10)
  /// The range reaches the node's end of file.
  public static let eof = BlockStatusFlags(rawValue: 0x20)
  /// The engine should ask the file child whether the data range is a hole.
  public static let recurse = BlockStatusFlags(rawValue: 0x40)
}

/// The status of the range starting at the queried offset, `count` bytes long.
public struct BlockStatus: Sendable {
  /// What the range is.
  public var flags: BlockStatusFlags
  /// How many bytes from the queried offset share this status (0 only at EOF).
  public var count: Int64
  /// Where the range starts in ``file`` when ``BlockStatusFlags/offsetValid`` is set.
  public var mapOffset: Int64
  /// The node that holds the data (a protocol node), when known.
  public var file: BlockNode?

  /// Creates a status.
  public init(
    flags: BlockStatusFlags, count: Int64, mapOffset: Int64 = 0, file: BlockNode? = nil
  ) {
    self.flags = flags
    self.count = count
    self.mapOffset = mapOffset
    self.file = file
  }
}
