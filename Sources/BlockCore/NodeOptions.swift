/// How a node uses the host's caches (QEMU's `cache=` modes).
public enum CacheMode: String, Sendable, CaseIterable {
  /// Host page cache, guest-visible write cache (flushes reach the disk).
  case writeback
  /// Host page cache, every write is followed by a flush (FUA emulation).
  case writethrough
  /// O_DIRECT, guest-visible write cache.
  case none
  /// O_DIRECT and a flush after every write.
  case directsync
  /// Host page cache, flushes never reach the disk.
  case unsafe

  /// Whether the node bypasses the host page cache (O_DIRECT).
  public var direct: Bool { self == .none || self == .directsync }
  /// Whether flush-to-disk is skipped (QEMU's BDRV_O_NO_FLUSH).
  public var noFlush: Bool { self == .unsafe }
  /// Whether the user sees a write cache (QEMU's `cache.writeback`); when false
  /// every write carries FUA.
  public var writeCacheEnabled: Bool { self != .writethrough && self != .directsync }
}

/// What the node does with discard requests (QEMU's `discard=`).
public enum DiscardMode: String, Sendable {
  /// Discards are ignored (QEMU's `ignore`/`off`, the default).
  case ignore
  /// Discards are passed to the driver; zero-writes may unmap.
  case unmap
}

/// Whether all-zero writes are turned into zero-writes (QEMU's `detect-zeroes=`).
public enum DetectZeroesMode: String, Sendable {
  /// Writes are written as given.
  case off
  /// All-zero writes become zero-writes.
  case on
  /// All-zero writes become zero-writes that may unmap (when discard=unmap).
  case unmap
}

/// Options a node is opened with that the engine, not the driver, acts on.
public struct NodeOptions: Sendable, Equatable {
  /// The node refuses writes (EPERM).
  public var readOnly = false
  /// Cache mode.
  public var cache: CacheMode = .writeback
  /// Discard handling.
  public var discard: DiscardMode = .ignore
  /// Zero detection on writes.
  public var detectZeroes: DetectZeroesMode = .off
  /// Copy-on-read for every read through this node.
  public var copyOnRead = false

  /// Options with QEMU's defaults.
  public init(
    readOnly: Bool = false, cache: CacheMode = .writeback, discard: DiscardMode = .ignore,
    detectZeroes: DetectZeroesMode = .off, copyOnRead: Bool = false
  ) {
    self.readOnly = readOnly
    self.cache = cache
    self.discard = discard
    self.detectZeroes = detectZeroes
    self.copyOnRead = copyOnRead
  }
}
