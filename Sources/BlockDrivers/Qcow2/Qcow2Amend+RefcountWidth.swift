import BlockCore

extension Qcow2Driver {
  /// Changes the refcount entry width to `2^order` bits as QEMU's
  /// `qcow2_change_refcount_order` does: walks over the old refcounts,
  /// allocating (through the old structure) a new refcount block for every
  /// new-width range with a cluster in use and a new refcount table, until
  /// nothing more needs allocating; then writes the new blocks and table,
  /// switches the header and frees the old structure. Call with the
  /// metadata lock held. A failure before the switch (a full disk) frees
  /// the new structure again and reports QEMU's wording ("Failed to write
  /// refblock: No space left on device").
  func changeRefcountWidth(
    _ node: BlockNode, file: BlockNode, order: UInt32, status: Qcow2AmendProgress
  ) async throws {
    let old = try refcountsForWrite()
    let oldTableOffset = old.tableOffset
    let newBits = 1 << Int(order)
    let clusterSize = header.clusterSize
    let walk = Qcow2RefcountWalk(
      old: old, newBits: newBits, newBlockEntries: Int(clusterSize) * 8 / newBits, file: file,
      status: status)

    var newTable: [UInt64] = []
    var newTableOffset: Int64 = 0
    var allocatedTableEntries = 0
    do {
      var allocated: Bool
      var walkIndex = 0
      repeat {
        allocated = false
        let totalWalks = max(walkIndex + 2, 3)
        defer { walkIndex += 1 }
        try await walk.run(filling: false, walk: walkIndex, of: totalWalks) { index, _, empty in
          guard !empty else { return }
          if index >= newTable.count {
            let perCluster = Int(clusterSize / 8)
            let size = (index + 1 + perCluster - 1) / perCluster * perCluster
            if UInt64(size) > Qcow2Header.maxRefcountTableBytes / 8 {
              throw BlockError(
                .notSupported,
                "This operation would make the refcount table grow beyond the maximum size supported by QEMU, aborting"
              )
            }
            newTable += [UInt64](repeating: 0, count: size - newTable.count)
          }
          if newTable[index] == 0 {
            newTable[index] = UInt64(
              try await Self.failing("Failed to allocate refblock") {
                try await old.allocate(clusters: 1, file: file)
              })
            allocated = true
          }
        }
        if allocated {
          if newTableOffset != 0 {
            _ = try await old.free(
              offset: newTableOffset, bytes: Int64(allocatedTableEntries) * 8, file: file)
            newTableOffset = 0
          }
          let clusters = (Int64(newTable.count) * 8 + clusterSize - 1) / clusterSize
          newTableOffset = try await Self.failing("Failed to allocate the new reftable") {
            try await old.allocate(clusters: clusters, file: file)
          }
          allocatedTableEntries = newTable.count
        }
      } while allocated
      try await file.flush()

      try await walk.run(filling: true, walk: walkIndex, of: walkIndex + 1) { index, block, _ in
        guard index < newTable.count, newTable[index] != 0 else { return }
        try await Self.failing("Failed to write refblock") {
          try await file.write(at: Int64(newTable[index]), bytes: block.bytes)
        }
      }
      var tableBytes = [UInt8](repeating: 0, count: newTable.count * 8)
      for (index, entry) in newTable.enumerated() { tableBytes.setUInt64(entry, at: index * 8) }
      try await Self.failing("Failed to write the new reftable") {
        try await file.write(at: newTableOffset, bytes: tableBytes)
      }
      try await Self.failing("Failed to flush the refblock cache") { try await file.flush() }
    } catch {
      // As QEMU does, the new structure is given back to the old one (which
      // is still the image's): a failed change leaks nothing.
      for entry in newTable where entry != 0 {
        _ = try? await old.free(offset: Int64(entry), bytes: clusterSize, file: file)
      }
      if newTableOffset != 0 {
        _ = try? await old.free(
          offset: newTableOffset, bytes: Int64(allocatedTableEntries) * 8, file: file)
      }
      throw error
    }

    let oldTable = old.table
    try await rewriteHeader(file) { header in
      header.refcountOrder = order
      header.refcountTableOffset = UInt64(newTableOffset)
      header.refcountTableClusters = UInt32(
        (Int64(newTable.count) * 8 + clusterSize - 1) / clusterSize)
    }
    let new = Qcow2Refcounts(header: header, table: newTable)
    refcounts = new
    for entry in oldTable where entry & Qcow2Entry.offsetMask != 0 {
      _ = try await new.free(
        offset: Int64(entry & Qcow2Entry.offsetMask), bytes: clusterSize, file: file)
    }
    _ = try await new.free(offset: oldTableOffset, bytes: Int64(oldTable.count) * 8, file: file)
    try await file.flush()
  }
}

extension Qcow2Driver {
  /// Runs `body`; a ``BlockError`` it throws is reworded as QEMU's
  /// `error_setg_errno(errp, -ret, what)`: "what: strerror".
  fileprivate static func failing<T>(_ what: String, _ body: @BlockActor () async throws -> T)
    async throws -> T
  {
    do {
      return try await body()
    } catch let error as BlockError {
      throw BlockError(error.code, "\(what): \(error.codeDescription)")
    }
  }
}

/// QEMU's `walk_over_reftable`: the old refcounts, cluster by cluster,
/// regrouped into refcount blocks of the new width; `operation` gets each
/// new block's table index, the block (filled in only when asked) and
/// whether all its refcounts are 0.
@BlockActor
struct Qcow2RefcountWalk {
  let old: Qcow2Refcounts
  let newBits: Int
  let newBlockEntries: Int
  let file: BlockNode
  let status: Qcow2AmendProgress

  /// Pass `walk` of `total` over the old refcount table (as it is while
  /// walking: the allocations may grow it).
  func run(
    filling: Bool, walk: Int, of total: Int,
    _ operation: (Int, Qcow2RefcountBlock, Bool) async throws -> Void
  ) async throws {
    let oldBlockEntries = Int(1) << Int(old.blockBits)
    let newMax: UInt64 = newBits == 64 ? .max : (1 << UInt64(newBits)) - 1
    var block = Qcow2RefcountBlock(clusterSize: Int(old.clusterSize), bits: newBits)
    var position = 0
    var empty = true
    var tableIndex = 0
    /// Hands the finished new block to `operation` and starts the next.
    func complete() async throws {
      try await operation(tableIndex, block, empty)
      tableIndex += 1
      position = 0
      empty = true
      if filling { block = Qcow2RefcountBlock(clusterSize: Int(old.clusterSize), bits: newBits) }
    }
    var oldIndex = 0
    while oldIndex < old.table.count {
      let size = Int64(old.table.count)
      status.update(Int64(walk) * size + Int64(oldIndex), of: Int64(total) * size)
      if old.table[oldIndex] & Qcow2Entry.offsetMask != 0 {
        // Read live, as QEMU's cached block: allocations made while
        // walking show up in the entries still to come.
        let first = Int64(oldIndex) << old.blockBits
        for entry in 0..<oldBlockEntries {
          if position >= newBlockEntries { try await complete() }
          let refcount = try await old.refcount(of: first + Int64(entry), file: file)
          if refcount > newMax {
            let offset = ((oldIndex << Int(old.blockBits)) + entry) << Int(old.clusterBits)
            throw BlockError(
              .invalidArgument,
              "Cannot decrease refcount entry width to \(newBits) bits: Cluster at offset 0x\(String(offset, radix: 16)) has a refcount of \(refcount)"
            )
          }
          if filling && refcount != 0 { block[position] = refcount }
          position += 1
          empty = empty && refcount == 0
        }
      } else {
        // Every refcount is 0: whole new blocks at a time.
        var remaining = oldBlockEntries
        while remaining > 0 {
          if position >= newBlockEntries { try await complete() }
          let step = min(remaining, newBlockEntries - position)
          position += step
          remaining -= step
        }
      }
      oldIndex += 1
    }
    if position > 0 { try await complete() }
    let size = Int64(old.table.count)
    status.update(Int64(walk + 1) * size, of: Int64(total) * size)
  }
}
