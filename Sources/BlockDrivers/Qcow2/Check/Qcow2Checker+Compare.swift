import BlockCore

/// Comparing the counted references with the stored refcounts and repairing
/// them (QEMU's `qcow2_check_refcounts`, `compare_refcounts` and
/// `check_oflag_copied`).
extension Qcow2Checker {
  /// The whole refcount check: count, compare, repair or rebuild, then check
  /// the COPIED flags and compute the image end offset.
  func checkRefcounts() async throws {
    let fileClusters = clusters(file.length)
    if fileClusters > Int64(Int32.max) {
      result.checkErrors += 1
      throw Abort(error: BlockError(.fileTooLarge))
    }
    references = Qcow2ReferenceCounts(count: Int(fileClusters))
    result.totalClusters = clusters(Int64(header.size))
    var rebuild = false
    try await calculateRefcounts(fix: mode, rebuild: &rebuild)

    // Compared once without fixing; when only fixes are due (no rebuild),
    // compared again from the same counts with them.
    let beforeCompare = result
    var highest = try await compareRefcounts(fix: [], rebuild: &rebuild)
    if rebuild && mode.contains(.fixErrors) {
      let old = result
      var freshLeaks: Int64 = 0
      report("Rebuilding refcount structure")
      try await rebuildRefcountStructure()
      result.corruptions = 0
      result.leaks = 0
      rebuild = false
      references = Qcow2ReferenceCounts(count: references.count)
      try await calculateRefcounts(fix: [], rebuild: &rebuild)
      if mode.contains(.fixLeaks) {
        // The old structures are leaked now: free them. Leaks that remain
        // were made by the rebuild itself.
        let saved = result
        result = Qcow2CheckResult()
        result.messages = saved.messages
        highest = try await compareRefcounts(fix: .fixLeaks, rebuild: &rebuild)
        if rebuild { report("ERROR rebuilt refcount structure is still broken") }
        freshLeaks = result.leaks
        let messages = result.messages
        result = saved
        result.messages = messages
      }
      if result.corruptions < old.corruptions {
        result.corruptionsFixed += old.corruptions - result.corruptions
      }
      if result.leaks < old.leaks { result.leaksFixed += old.leaks - result.leaks }
      result.leaks += freshLeaks
    } else if !mode.isEmpty {
      if rebuild {
        report("ERROR need to rebuild refcount structures")
        result.checkErrors += 1
        throw Abort(error: BlockError(.ioError))
      }
      if result.leaks != 0 || result.corruptions != 0 {
        let messages = result.messages
        result = beforeCompare
        result.messages = messages
        highest = try await compareRefcounts(fix: mode, rebuild: &rebuild)
      }
    }
    try await checkCopiedFlags()
    result.imageEndOffset = (highest + 1) * clusterSize
  }

  /// Compares every cluster's stored refcount with its counted references
  /// and fixes what `fix` allows (QEMU's `compare_refcounts`); returns the
  /// highest cluster in use or referenced. A stored refcount of 0 for a
  /// referenced cluster needs a rebuild.
  func compareRefcounts(fix: Qcow2CheckMode, rebuild: inout Bool) async throws -> Int64 {
    var highest: Int64 = 0
    // The stored block of the current range, fetched once per range (and
    // again after a repair changed it).
    var blockIndex = -1
    var block: Qcow2RefcountBlock?
    var blockError: BlockError?
    let total = Int64(references.count)
    var next: Int64 = 0
    while next < total {
      let cluster = next
      next += 1
      let index = Int(cluster >> blockBits)
      if index != blockIndex {
        blockIndex = index
        do {
          block = try await storedBlock(covering: cluster)
          blockError = nil
        } catch let error as BlockError {
          blockError = error
        }
        // A range without a refcount block and without references has
        // nothing to compare: skip it whole.
        let end = min(total, (Int64(index) + 1) << blockBits)
        if blockError == nil && block == nil
          && references.firstReferenced(from: Int(cluster), to: Int(end)) == nil
        {
          next = end
          continue
        }
      }
      if let blockError {
        // QEMU asks for every cluster's refcount and fails for each.
        report("Can't get refcount for cluster \(cluster): \(blockError.codeDescription)")
        result.checkErrors += 1
        continue
      }
      let stored = block?[Int(cluster & ((1 << blockBits) - 1))] ?? 0
      let expected = references[Int(cluster)]
      if stored > 0 || expected > 0 { highest = cluster }
      guard stored != expected else { continue }
      /// What a mismatch may be repaired as.
      enum Repair { case leak, corruption }
      var repair: Repair?
      if stored == 0 {
        rebuild = true
      } else if stored > expected && fix.contains(.fixLeaks) {
        repair = .leak
      } else if stored < expected && fix.contains(.fixErrors) {
        repair = .corruption
      }
      let label = repair != nil ? "Repairing" : stored < expected ? "ERROR" : "Leaked"
      report("\(label) cluster \(cluster) refcount=\(stored) reference=\(expected)")
      if let repair {
        do {
          try await setStoredRefcount(of: cluster, to: expected)
          blockIndex = -1
          if expected == 0 {
            // QEMU frees with QCOW2_DISCARD_ALWAYS and its file children
            // always unmap: the file punches a hole, whatever the node's
            // own discard option.
            try? await file.driver.discard(
              file, offset: cluster << clusterBits, length: clusterSize)
          }
          switch repair {
          case .leak: result.leaksFixed += 1
          case .corruption: result.corruptionsFixed += 1
          }
          continue
        } catch is BlockError {}
      }
      if stored < expected { result.corruptions += 1 } else { result.leaks += 1 }
    }
    return highest
  }

  /// Checks that the COPIED flag of every active L1 entry and data cluster
  /// entry is set exactly when the refcount is 1, repairing when asked to or
  /// (with only leaks to fix) when the refcounts are now known right.
  private func checkCopiedFlags() async throws {
    let repair =
      mode.contains(.fixErrors)
      || (mode.contains(.fixLeaks) && result.checkErrors == 0 && result.corruptions == 0
        && result.leaks == 0)
    for index in l1Table.indices {
      let l1Entry = l1Table[index]
      let l2Offset = Int64(l1Entry & Qcow2Entry.offsetMask)
      guard l2Offset != 0 else { continue }
      guard let refcount = try? await storedRefcount(of: l2Offset >> clusterBits) else {
        continue
      }
      if (refcount == 1) != (l1Entry & Qcow2Entry.copied != 0) {
        result.corruptions += 1
        report(
          "\(repair ? "Repairing" : "ERROR") OFLAG_COPIED L2 cluster: l1_index=\(index) l1_entry=\(hex(l1Entry)) refcount=\(refcount)"
        )
        if repair {
          l1Table[index] =
            refcount == 1 ? l1Entry | Qcow2Entry.copied : l1Entry & ~Qcow2Entry.copied
          var bytes = [UInt8](repeating: 0, count: 8)
          bytes.setUInt64(l1Table[index], at: 0)
          do {
            try await file.write(at: Int64(header.l1TableOffset) + Int64(index) * 8, bytes: bytes)
          } catch let error as BlockError {
            result.checkErrors += 1
            throw Abort(error: error)
          }
          result.corruptions -= 1
          result.corruptionsFixed += 1
        }
      }
      var table: [UInt8]
      do {
        table = try await readPadded(at: l2Offset, count: Int(clusterSize))
      } catch let error as BlockError {
        report("ERROR: Could not read L2 table: \(error.codeDescription)")
        result.checkErrors += 1
        throw Abort(error: error)
      }
      var dirty: Int64 = 0
      for slot in 0..<l2Size {
        let position = slot * Int(l2EntryBytes)
        let entry = table.uint64(at: position)
        let type = clusterType(of: entry)
        guard type == .normal || type == .zeroAllocated else { continue }
        let refcount: UInt64
        if hasDataFile {
          refcount = 1
        } else {
          guard
            let stored = try? await storedRefcount(
              of: Int64(entry & Qcow2Entry.offsetMask) >> clusterBits)
          else { continue }
          refcount = stored
        }
        if (refcount == 1) != (entry & Qcow2Entry.copied != 0) {
          result.corruptions += 1
          report(
            "\(repair ? "Repairing" : "ERROR") OFLAG_COPIED data cluster: l2_entry=\(hex(entry)) refcount=\(refcount)"
          )
          if repair {
            table.setUInt64(
              refcount == 1 ? entry | Qcow2Entry.copied : entry & ~Qcow2Entry.copied,
              at: position)
            dirty += 1
          }
        }
      }
      if dirty > 0 {
        do {
          try await file.write(at: l2Offset, bytes: table)
        } catch let error as BlockError {
          report("ERROR: Could not write L2 table: \(error.codeDescription)")
          result.checkErrors += 1
          throw Abort(error: error)
        }
        result.corruptions -= dirty
        result.corruptionsFixed += dirty
      }
    }
  }

  /// The stored refcount block covering `cluster`, nil where there is none
  /// (refcounts 0); a misaligned block is an I/O error (and a corruption).
  func storedBlock(covering cluster: Int64) async throws -> Qcow2RefcountBlock? {
    let index = Int(cluster >> blockBits)
    guard index < storedTable.count else { return nil }
    let blockOffset = Int64(bitPattern: storedTable[index] & Self.refcountTableOffsetMask)
    if blockOffset == 0 { return nil }
    if blockOffset & (clusterSize - 1) != 0 {
      await signalCorruption(
        "Refblock offset \(alternateHex(UInt64(blockOffset))) unaligned (reftable index: \(alternateHex(UInt64(index))))"
      )
      throw BlockError(.ioError)
    }
    return try await storedBlock(at: blockOffset)
  }

  /// The stored refcount of `cluster` (QEMU's `qcow2_get_refcount`): 0 where
  /// no refcount block covers it; a misaligned block is an I/O error.
  func storedRefcount(of cluster: Int64) async throws -> UInt64 {
    let index = Int(cluster >> blockBits)
    guard index < storedTable.count else { return 0 }
    let blockOffset = Int64(bitPattern: storedTable[index] & Self.refcountTableOffsetMask)
    if blockOffset == 0 { return 0 }
    if blockOffset & (clusterSize - 1) != 0 {
      await signalCorruption(
        "Refblock offset \(alternateHex(UInt64(blockOffset))) unaligned (reftable index: \(alternateHex(UInt64(index))))"
      )
      throw BlockError(.ioError)
    }
    let block = try await storedBlock(at: blockOffset)
    return block[Int(cluster & ((1 << blockBits) - 1))]
  }

  /// Writes `value` as the stored refcount of `cluster`, whose refcount
  /// block exists.
  private func setStoredRefcount(of cluster: Int64, to value: UInt64) async throws {
    let index = Int(cluster >> blockBits)
    guard index < storedTable.count else { throw BlockError(.ioError) }
    let blockOffset = Int64(bitPattern: storedTable[index] & Self.refcountTableOffsetMask)
    guard blockOffset != 0, blockOffset & (clusterSize - 1) == 0 else {
      throw BlockError(.ioError)
    }
    var block = try await storedBlock(at: blockOffset)
    let entry = Int(cluster & ((1 << blockBits) - 1))
    block[entry] = value
    storedBlocks[blockOffset] = block
    let bits = header.refcountBits
    let start = entry * bits / 8
    let end = ((entry + 1) * bits + 7) / 8
    try await file.write(at: blockOffset + Int64(start), bytes: Array(block.bytes[start..<end]))
  }

  /// The stored refcount block at `offset`.
  private func storedBlock(at offset: Int64) async throws -> Qcow2RefcountBlock {
    if let block = storedBlocks[offset] { return block }
    let bytes = try await readPadded(at: offset, count: Int(clusterSize))
    let block = Qcow2RefcountBlock(bytes: bytes, bits: header.refcountBits)
    storedBlocks[offset] = block
    return block
  }
}
