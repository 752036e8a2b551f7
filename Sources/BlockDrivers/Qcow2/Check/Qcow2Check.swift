import BlockCore

/// What a consistency check may repair (QEMU's `BdrvCheckMode`):
/// `qemu-img check -r leaks` is ``fixLeaks``, `-r all` both.
public struct Qcow2CheckMode: OptionSet, Sendable {
  public let rawValue: Int
  /// A mode from its bits.
  public init(rawValue: Int) { self.rawValue = rawValue }
  /// Free clusters whose stored refcount is higher than their references
  /// (QEMU's `BDRV_FIX_LEAKS`).
  public static let fixLeaks = Qcow2CheckMode(rawValue: 1)
  /// Raise refcounts that are too low, fix COPIED flags, rebuild a broken
  /// refcount structure (QEMU's `BDRV_FIX_ERRORS`).
  public static let fixErrors = Qcow2CheckMode(rawValue: 2)
}

/// The outcome of a qcow2 consistency check (QEMU's `BdrvCheckResult`,
/// filled in by `qcow2_co_check`), with the diagnostics QEMU prints on
/// standard error while checking.
public struct Qcow2CheckResult: Sendable, Equatable {
  /// Inconsistencies that may harm data (wrong refcounts, COPIED flags, ...).
  public var corruptions: Int64 = 0
  /// Clusters whose refcount is higher than their references.
  public var leaks: Int64 = 0
  /// Problems that kept the check from looking at everything.
  public var checkErrors: Int64 = 0
  /// Corruptions repaired.
  public var corruptionsFixed: Int64 = 0
  /// Leaks repaired.
  public var leaksFixed: Int64 = 0
  /// The end of the last cluster in use or referenced.
  public var imageEndOffset: Int64 = 0
  /// Clusters of the virtual disk.
  public var totalClusters: Int64 = 0
  /// Guest clusters with data in the image (active L1 table).
  public var allocatedClusters: Int64 = 0
  /// Allocated clusters not right after the previous one of their L2 table.
  public var fragmentedClusters: Int64 = 0
  /// Compressed guest clusters.
  public var compressedClusters: Int64 = 0
  /// The lines QEMU prints on standard error during the check
  /// ("Leaked cluster 5 refcount=2 reference=1", "Repairing ...").
  public var messages: [String] = []
  /// Why the check could not complete (QEMU's negative return value), if it
  /// could not: `qemu-img check` then reports "Check failed".
  public var failure: BlockError?
  /// The indices in ``messages`` of the lines QEMU prints with
  /// `error_report` (after the program name, "qemu-img: ").
  public var errorReports: Set<Int> = []

  /// An empty result.
  public init() {}
}

extension Qcow2Driver {
  /// Checks the image's metadata for consistency and, as `mode` allows,
  /// repairs it (QEMU's `qcow2_co_check`): the same counts, messages and
  /// repairs as `qemu-img check`. Repairs need a writable node. After a
  /// repair without remaining errors, the dirty and corrupt bits are
  /// cleared.
  public func check(_ node: BlockNode, mode: Qcow2CheckMode = []) async throws
    -> Qcow2CheckResult
  {
    if !mode.isEmpty && node.isReadOnly {
      throw BlockError(.permissionDenied, "Image is read-only")
    }
    return try await lock.withLock { try await checkLocked(node, mode: mode) }
  }

  /// ``check(_:mode:)`` with the metadata lock held; afterwards the driver
  /// forgets every cached table the repair may have changed.
  func checkLocked(_ node: BlockNode, mode: Qcow2CheckMode) async throws -> Qcow2CheckResult {
    let file = try fileNode(node)
    // The check reads the L2 tables and refcounts from the file.
    try await writeBackMetadata(node)
    let checker = Qcow2Checker(file: file, header: header, mode: mode)
    checker.discardsFreedSnapshotTable = safety.discardPassthrough.passes(.snapshot)
    let result = await checker.run()
    if checker.header.incompatibleFeatures & Qcow2Feature.corrupt != 0 {
      // QEMU's fatal corruption signal: the node is unusable from now on.
      header.incompatibleFeatures |= Qcow2Feature.corrupt
    }
    if !mode.isEmpty {
      header = checker.header
      l1Table = checker.l1Table
      l2Cache = Qcow2L2Cache(capacity: l2Cache.capacity)
      safety.snapshotTableSize = checker.snapshotTableSize
      safety.inactiveL1Tables = checker.snapshots.map {
        Qcow2SnapshotTable.L1Table(
          offset: Int64(bitPattern: $0.l1TableOffset), bytes: Int64($0.l1Size) * 8)
      }
      if let refcounts {
        refcounts.reload(
          tableOffset: Int64(header.refcountTableOffset), table: checker.storedTable)
      }
    }
    return result
  }
}

extension Qcow2Refcounts {
  /// Replaces the refcount table after the check rebuilt or repaired the
  /// refcounts behind the allocator's back: cached blocks and allocation
  /// hints are forgotten.
  func reload(tableOffset: Int64, table: [UInt64]) {
    self.tableOffset = tableOffset
    self.table = table
    blocks = [:]
    deferredBlocks = []
    resetAllocationHints()
  }
}
