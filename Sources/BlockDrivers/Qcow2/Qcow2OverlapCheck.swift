import BlockCore

/// The metadata sections a write to the image file is checked against before
/// it happens (QEMU's `QCow2MetadataOverlap` and the `overlap-check` open
/// option): a write landing on one of them means a corrupt table pointed it
/// there.
public struct Qcow2OverlapSections: OptionSet, Sendable, Hashable {
  public let rawValue: UInt32

  /// Creates a set from its bits (QEMU's `QCOW2_OL_*` bit numbers).
  public init(rawValue: UInt32) { self.rawValue = rawValue }

  /// The first cluster (header and extensions).
  public static let mainHeader = Self(rawValue: 1 << 0)
  /// The active L1 table.
  public static let activeL1 = Self(rawValue: 1 << 1)
  /// The L2 tables the active L1 table points at.
  public static let activeL2 = Self(rawValue: 1 << 2)
  /// The refcount table.
  public static let refcountTable = Self(rawValue: 1 << 3)
  /// The refcount blocks.
  public static let refcountBlock = Self(rawValue: 1 << 4)
  /// The snapshot table.
  public static let snapshotTable = Self(rawValue: 1 << 5)
  /// The snapshots' L1 tables.
  public static let inactiveL1 = Self(rawValue: 1 << 6)
  /// The L2 tables of the snapshots (read from the file on every check).
  public static let inactiveL2 = Self(rawValue: 1 << 7)
  /// The persistent bitmap directory.
  public static let bitmapDirectory = Self(rawValue: 1 << 8)

  /// QEMU's `constant` template: sections whose location is known without
  /// reading anything.
  public static let constant: Self = [mainHeader, activeL1, refcountTable, snapshotTable]
  /// QEMU's `cached` template (the default): also everything found in
  /// in-memory tables.
  public static let cached: Self = constant.union([
    activeL2, refcountBlock, inactiveL1, bitmapDirectory,
  ])
  /// QEMU's `all` template: also the snapshots' L2 tables.
  public static let all: Self = cached.union(inactiveL2)

  /// Each section with its option name (`overlap-check.<name>`) and the
  /// name QEMU's corruption message uses, in bit order.
  static let names: [(section: Self, option: String, message: String)] = [
    (mainHeader, "main-header", "qcow2_header"),
    (activeL1, "active-l1", "active L1 table"),
    (activeL2, "active-l2", "active L2 table"),
    (refcountTable, "refcount-table", "refcount table"),
    (refcountBlock, "refcount-block", "refcount block"),
    (snapshotTable, "snapshot-table", "snapshot table"),
    (inactiveL1, "inactive-l1", "inactive L1 table"),
    (inactiveL2, "inactive-l2", "inactive L2 table"),
    (bitmapDirectory, "bitmap-directory", "bitmap directory"),
  ]

  /// The name of the lowest section in the set, as QEMU's message says it.
  var messageName: String {
    Self.names.first { contains($0.section) }?.message ?? "unknown metadata"
  }

  /// Takes `overlap-check`, `overlap-check.template` and the
  /// `overlap-check.<section>` switches from `options` (QEMU's
  /// `qcow2_update_options_prepare`): a template, then per-section
  /// overrides; `cached` when nothing is given.
  static func take(from options: inout DriverOptions) throws -> Self {
    let plain = options.take("overlap-check")
    let template = options.take("overlap-check.template")
    if let plain, let template, plain != template {
      throw BlockError(
        .invalidArgument,
        "Conflicting values for qcow2 options 'overlap-check' ('\(plain)') and 'overlap-check.template' ('\(template)')"
      )
    }
    var sections: Self
    switch plain ?? template ?? "cached" {
    case "none": sections = []
    case "constant": sections = .constant
    case "cached": sections = .cached
    case "all": sections = .all
    case let other:
      throw BlockError(
        .invalidArgument,
        "Unsupported value '\(other)' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all"
      )
    }
    for (section, option, _) in names {
      let key = "overlap-check.\(option)"
      guard options[key] != nil else { continue }
      if try options.takeBool(key, default: false) {
        sections.insert(section)
      } else {
        sections.remove(section)
      }
    }
    return sections
  }
}

extension Qcow2Driver {
  /// The first metadata section (in QEMU's order of checking) that a write of
  /// `size` bytes at host `offset` would touch, nil when none (QEMU's
  /// `qcow2_check_metadata_overlap`). The header is compared byte-exact,
  /// everything else at cluster granularity. `ignoring` leaves out the
  /// sections the caller is legitimately writing.
  func metadataOverlap(
    _ node: BlockNode, offset: Int64, size: Int64, ignoring: Qcow2OverlapSections = []
  ) async throws -> Qcow2OverlapSections? {
    let checks = safety.overlapChecks.subtracting(ignoring)
    guard size > 0, !checks.isEmpty else { return nil }
    if checks.contains(.mainHeader) && offset < header.clusterSize { return .mainHeader }
    let clusterSize = header.clusterSize
    let start = offset & ~(clusterSize - 1)
    let end = (offset + size + clusterSize - 1) & ~(clusterSize - 1)
    func hits(_ areaStart: Int64, _ areaLength: Int64) -> Bool {
      let (areaEnd, overflow) = areaStart.addingReportingOverflow(areaLength)
      return areaLength > 0 && areaStart < end && start < (overflow ? .max : areaEnd)
    }
    if checks.contains(.activeL1), hits(Int64(header.l1TableOffset), Int64(l1Table.count) * 8) {
      return .activeL1
    }
    if checks.contains(.refcountTable), let refcounts,
      hits(refcounts.tableOffset, Int64(refcounts.table.count) * 8)
    {
      return .refcountTable
    }
    if checks.contains(.snapshotTable),
      hits(Int64(header.snapshotsOffset), safety.snapshotTableSize)
    {
      return .snapshotTable
    }
    if checks.contains(.inactiveL1),
      safety.inactiveL1Tables.contains(where: { hits($0.offset, $0.bytes) })
    {
      return .inactiveL1
    }
    if checks.contains(.activeL2),
      Self.anyCluster(of: l1Table[..<usedL1Entries], within: start..<end, clusterSize)
    {
      return .activeL2
    }
    if checks.contains(.refcountBlock), let refcounts,
      Self.anyCluster(
        of: refcounts.table[..<refcounts.usedTableEntries], within: start..<end, clusterSize)
    {
      return .refcountBlock
    }
    if checks.contains(.bitmapDirectory), header.autoclearFeatures & Qcow2Feature.bitmaps != 0,
      let directory = header.bitmapDirectory, hits(directory.offset, directory.bytes)
    {
      return .bitmapDirectory
    }
    if checks.contains(.inactiveL2) {
      let file = try fileNode(node)
      for table in safety.inactiveL1Tables {
        let bytes = try await file.read(at: table.offset, count: Int(table.bytes))
        let entries = bytes.bigEndianUInt64s(count: Int(table.bytes / 8))
        if entries.contains(where: { hits(Int64($0 & Qcow2Entry.offsetMask), clusterSize) }) {
          return .inactiveL2
        }
      }
    }
    return nil
  }

  /// Whether a cluster some entry of `table` points at (its offset field)
  /// lies in `range` (cluster-aligned host offsets). A plain loop: it runs
  /// for every write, over the tables' entries up to the last one in use
  /// (QEMU's `cached` checks stop at `max_refcount_table_index` too).
  static func anyCluster(
    of table: ArraySlice<UInt64>, within range: Range<Int64>, _ clusterSize: Int64
  ) -> Bool {
    table.withUnsafeBufferPointer { entries in
      for entry in entries {
        let offset = Int64(entry & Qcow2Entry.offsetMask)
        if offset != 0 && offset < range.upperBound && range.lowerBound < offset + clusterSize {
          return true
        }
      }
      return false
    }
  }

  /// Refuses a write of `size` bytes at host `offset` that would land on
  /// metadata (QEMU's `qcow2_pre_write_overlap_check`): the image is marked
  /// corrupt, the node becomes unusable and the request fails with EIO.
  func checkOverlapBeforeWrite(
    _ node: BlockNode, offset: Int64, size: Int64, ignoring: Qcow2OverlapSections = []
  ) async throws {
    guard
      let section = try await metadataOverlap(
        node, offset: offset, size: size, ignoring: ignoring)
    else { return }
    await signalCorruption(
      node, fatal: true,
      "Preventing invalid write on metadata (overlaps with \(section.messageName))")
    throw BlockError(.ioError)
  }
}

extension [UInt64] {
  /// The number of entries up to and including the last non-zero one: the
  /// part of a table of offsets (L1, refcount table) that is in use.
  var usedEntryCount: Int { (lastIndex { $0 != 0 } ?? -1) + 1 }
}

extension Qcow2Header {
  /// Where the bitmaps extension says the bitmap directory is, if present.
  var bitmapDirectory: (offset: Int64, bytes: Int64)? {
    guard let data = extensions.first(where: { $0.type == Qcow2HeaderExtension.bitmaps })?.data,
      data.count >= 24
    else { return nil }
    return (Int64(bitPattern: data.uint64(at: 16)), Int64(bitPattern: data.uint64(at: 8)))
  }
}
