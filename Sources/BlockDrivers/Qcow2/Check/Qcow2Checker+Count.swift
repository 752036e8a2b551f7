import BlockCore

/// Counting the references every host cluster should have (QEMU's
/// `calculate_refcounts` and the table walks under it).
extension Qcow2Checker {
  /// Reserved bits of an L1 entry.
  static let l1ReservedMask: UInt64 = 0x7F00_0000_0000_01FF
  /// Reserved bits of a standard L2 entry.
  static let l2ReservedMask: UInt64 = 0x3F00_0000_0000_01FE
  /// Reserved bits of a refcount table entry.
  static let refcountTableReservedMask: UInt64 = 0x1FF
  /// The offset bits of a refcount table entry.
  static let refcountTableOffsetMask: UInt64 = 0xFFFF_FFFF_FFFF_FE00
  /// The "allocated" half of a subcluster bitmap.
  static let allSubclustersAllocated: UInt64 = 0xFFFF_FFFF

  /// Counts the references of the header, the L1/L2 tables of the image and
  /// its snapshots, the snapshot table and the refcount structure; a
  /// refcount structure that must be rebuilt sets `rebuild`.
  func calculateRefcounts(fix: Qcow2CheckMode, rebuild: inout Bool) async throws {
    try incrementReferences(offset: 0, size: clusterSize)
    try await checkL1(
      offset: Int64(header.l1TableOffset), size: Int(header.l1Size), active: true, fix: fix)
    if hasDataFile && !snapshots.isEmpty {
      report("ERROR \(snapshots.count) snapshots in image with data file")
      result.corruptions += 1
    }
    for snapshot in snapshots {
      if snapshot.l1TableOffset & UInt64(clusterSize - 1) != 0 {
        report(
          "ERROR snapshot \(snapshot.id) (\(snapshot.name)) l1_offset=\(alternateHex(snapshot.l1TableOffset)): L1 table is not cluster aligned; snapshot table entry corrupted"
        )
        result.corruptions += 1
        continue
      }
      if UInt64(snapshot.l1Size) > Qcow2Header.maxL1Bytes / 8 {
        report(
          "ERROR snapshot \(snapshot.id) (\(snapshot.name)) l1_size=\(alternateHex(UInt64(snapshot.l1Size))): L1 table is too large; snapshot table entry corrupted"
        )
        result.corruptions += 1
        continue
      }
      try await checkL1(
        offset: Int64(bitPattern: snapshot.l1TableOffset), size: Int(snapshot.l1Size),
        active: false,
        fix: fix)
    }
    try incrementReferences(offset: Int64(header.snapshotsOffset), size: snapshotTableSize)
    try incrementReferences(
      offset: Int64(header.refcountTableOffset), size: Int64(storedTable.count) * 8)
    try await countBitmaps()
    try await checkRefcountBlocks(fix: fix, rebuild: &rebuild)
  }

  /// Adds a reference to every cluster `size` bytes at `offset` touch
  /// (QEMU's `qcow2_inc_refcounts_imrt`); a region reaching a cluster or more
  /// past the end of the file is a corruption.
  func incrementReferences(offset: Int64, size: Int64) throws {
    guard size > 0 else { return }
    // offset + size - file.length >= clusterSize, without overflowing for
    // offsets and sizes read from the file; a negative offset (bit 63 set)
    // lies outside the file too.
    if offset < 0 || offset >= file.length + clusterSize - size {
      report(
        "ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x\(hex(UInt64(bitPattern: offset))) size 0x\(hex(UInt64(size)))"
      )
      result.corruptions += 1
      return
    }
    let first = offset >> clusterBits
    let last = (offset + size - 1) >> clusterBits
    for cluster in first...last {
      growReferences(to: cluster + 1)
      let count = references[Int(cluster)]
      if count == refcountMax {
        report("ERROR: overflow cluster offset=0x\(hex(UInt64(cluster << clusterBits)))")
        report(
          "Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing"
        )
        result.corruptions += 1
        continue
      }
      references[Int(cluster)] = count + 1
    }
  }

  /// Counts an L1 table and the L2 tables it points at (QEMU's
  /// `check_refcounts_l1`); allocation statistics come from the active one.
  private func checkL1(offset: Int64, size: Int, active: Bool, fix: Qcow2CheckMode) async throws {
    guard size > 0 else { return }
    try incrementReferences(offset: offset, size: Int64(size) * 8)
    let table: [UInt64]
    do {
      table = try await readPadded(at: offset, count: size * 8).bigEndianUInt64s(count: size)
    } catch let error as BlockError {
      // A snapshot's L1 offset with bit 63 set: QEMU's read fails (EIO).
      report("ERROR: I/O error in check_refcounts_l1")
      result.checkErrors += 1
      throw Abort(error: error)
    }
    for entry in table where entry != 0 {
      if entry & Self.l1ReservedMask != 0 {
        report("ERROR found L1 entry with reserved bits set: \(hex(entry))")
        result.corruptions += 1
      }
      let l2Offset = Int64(entry & Qcow2Entry.offsetMask)
      try incrementReferences(offset: l2Offset, size: clusterSize)
      if l2Offset & (clusterSize - 1) != 0 {
        report(
          "ERROR l2_offset=\(hex(UInt64(l2Offset))): Table is not cluster aligned; L1 entry corrupted"
        )
        result.corruptions += 1
      }
      try await checkL2(at: l2Offset, statistics: active, active: active, fix: fix)
    }
  }

  /// Counts the clusters an L2 table references (QEMU's
  /// `check_refcounts_l2`).
  private func checkL2(at l2Offset: Int64, statistics: Bool, active: Bool, fix: Qcow2CheckMode)
    async throws
  {
    let bytes = try await readPadded(at: l2Offset, count: Int(clusterSize))
    var nextContiguous: Int64 = 0
    for index in 0..<l2Size {
      var entry = bytes.uint64(at: index * Int(l2EntryBytes))
      let bitmap = hasSubclusters ? bytes.uint64(at: index * 16 + 8) : 0
      let type = clusterType(of: entry)
      if type != .compressed && entry & Self.l2ReservedMask != 0 {
        report("ERROR found l2 entry with reserved bits set: \(hex(entry))")
        result.corruptions += 1
      }
      switch type {
      case .compressed:
        if entry & Qcow2Entry.copied != 0 {
          let descriptor = Qcow2CompressedDescriptor(entry: entry, clusterBits: header.clusterBits)
          report(
            "ERROR: coffset=0x\(hex(UInt64(descriptor.offset))): copied flag must never be set for compressed clusters"
          )
          entry &= ~Qcow2Entry.copied
          result.corruptions += 1
        }
        if hasDataFile {
          report("ERROR compressed cluster \(index) with data file, entry=0x\(hex(entry))")
          result.corruptions += 1
          continue
        }
        if bitmap != 0 {
          report(
            "ERROR compressed cluster \(index) with non-zero subcluster allocation bitmap, entry=0x\(hex(entry))"
          )
          result.corruptions += 1
          continue
        }
        let descriptor = Qcow2CompressedDescriptor(entry: entry, clusterBits: header.clusterBits)
        try incrementReferences(offset: descriptor.offset, size: descriptor.length)
        if statistics {
          result.allocatedClusters += 1
          result.compressedClusters += 1
          result.fragmentedClusters += 1
        }
      case .normal, .zeroAllocated:
        let offset = Int64(entry & Qcow2Entry.offsetMask)
        if (bitmap >> 32) & bitmap != 0 {
          result.corruptions += 1
          report(
            "ERROR offset=\(hex(UInt64(offset))): Allocated cluster has corrupted subcluster allocation bitmap"
          )
        }
        if offset & (clusterSize - 1) != 0 {
          result.corruptions += 1
          let containsData =
            hasSubclusters
            ? bitmap & Self.allSubclustersAllocated != 0 : entry & Qcow2Entry.zero == 0
          if !containsData {
            let repairing = fix.contains(.fixErrors)
            report(
              "\(repairing ? "Repairing" : "ERROR") offset=\(hex(UInt64(offset))): Preallocated cluster is not properly aligned; L2 entry corrupted."
            )
            if repairing {
              try await zeroEntry(l2Offset: l2Offset, index: index)
              continue
            }
          } else {
            report(
              "ERROR offset=\(hex(UInt64(offset))): Data cluster is not properly aligned; L2 entry corrupted."
            )
          }
        }
        if statistics {
          result.allocatedClusters += 1
          if nextContiguous != 0 && offset != nextContiguous { result.fragmentedClusters += 1 }
          nextContiguous = offset + clusterSize
        }
        if !hasDataFile { try incrementReferences(offset: offset, size: clusterSize) }
      case .zeroPlain:
        break
      case .unallocated, .unallocatedAllocated:
        if bitmap & Self.allSubclustersAllocated != 0 {
          result.corruptions += 1
          report("ERROR: Unallocated cluster has non-zero subcluster allocation bitmap")
        }
      }
    }
  }

  /// The type of an L2 entry of this image (QEMU's `qcow2_get_cluster_type`:
  /// no zero flag with subclusters).
  func clusterType(of entry: UInt64) -> Qcow2ClusterType {
    if entry & Qcow2Entry.compressed != 0 { return .compressed }
    if entry & Qcow2Entry.zero != 0 && !hasSubclusters {
      return entry & Qcow2Entry.offsetMask != 0 ? .zeroAllocated : .zeroPlain
    }
    return entry & Qcow2Entry.offsetMask != 0 ? .normal : .unallocated
  }

  /// Replaces a misaligned preallocated zero cluster's entry by a plain zero
  /// entry (QEMU's `fix_l2_entry_by_zero`).
  private func zeroEntry(l2Offset: Int64, index: Int) async throws {
    var entry = [UInt8](repeating: 0, count: 8)
    entry.setUInt64(Qcow2Entry.zero, at: 0)
    try await file.write(at: l2Offset + Int64(index) * l2EntryBytes, bytes: entry)
    result.corruptions -= 1
    result.corruptionsFixed += 1
  }

  /// Counts the refcount blocks and checks the refcount table's entries
  /// (QEMU's `check_refblocks`): a block past the end of the file is
  /// reallocated there by growing the file when fixing errors.
  private func checkRefcountBlocks(fix: Qcow2CheckMode, rebuild: inout Bool) async throws {
    for (index, entry) in storedTable.enumerated() {
      let offset = Int64(bitPattern: entry & Self.refcountTableOffsetMask)
      let cluster = offset >> clusterBits
      if entry & Self.refcountTableReservedMask != 0 {
        report("ERROR refcount table entry \(index) has reserved bits set")
        result.corruptions += 1
        rebuild = true
        continue
      }
      if offset & (clusterSize - 1) != 0 {
        report(
          "ERROR refcount block \(index) is not cluster aligned; refcount table entry corrupted")
        result.corruptions += 1
        rebuild = true
        continue
      }
      if cluster >= Int64(references.count) || offset < 0 {
        result.corruptions += 1
        let repairing = fix.contains(.fixErrors)
        report("\(repairing ? "Repairing" : "ERROR") refcount block \(index) is outside image")
        if repairing {
          if try await growFile(toCover: offset) {
            result.corruptions -= 1
            result.corruptionsFixed += 1
            try incrementReferences(offset: offset, size: clusterSize)
            continue
          }
          rebuild = true
        }
        continue
      }
      if offset != 0 {
        try incrementReferences(offset: offset, size: clusterSize)
        if counted(cluster) != 1 {
          report("ERROR refcount block \(index) refcount=\(counted(cluster))")
          result.corruptions += 1
          rebuild = true
        }
      }
    }
  }

  /// Grows the file so that the cluster at `offset` is inside it; false
  /// (after reporting) when it cannot.
  private func growFile(toCover offset: Int64) async throws -> Bool {
    guard offset >= 0, offset <= Int64.max - clusterSize else {
      report("ERROR could not resize image: Invalid argument")
      return false
    }
    do {
      try await file.truncate(to: offset + clusterSize, exact: false)
    } catch let error as BlockError {
      reportError("Could not resize file: \(error.codeDescription)")
      report("ERROR could not resize image: \(error.codeDescription)")
      return false
    }
    let needed = clusters(file.length)
    if needed - Int64(references.count) > Self.maximumReferenceGrowth {
      // QEMU's realloc_refcount_array fails for an array this large (and
      // the check with it); counting would take gigabytes here.
      result.checkErrors += 1
      throw Abort(error: BlockError(.noMemory))
    }
    growReferences(to: needed)
    return offset >> clusterBits < Int64(references.count)
  }

  /// The most clusters a repair grows the counted range by to cover one
  /// refcount block past the end of the file (256 MiB of counters): a
  /// refcount table entry pointing terabytes away is damage, not an image.
  static let maximumReferenceGrowth: Int64 = 1 << 27
}
