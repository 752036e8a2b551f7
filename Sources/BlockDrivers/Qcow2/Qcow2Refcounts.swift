import BlockCore

/// The refcount table and a cache of refcount blocks, with QEMU's cluster
/// allocator (block/qcow2-refcount.c): a free-cluster search from the lowest
/// cluster that may be free, and refcount blocks allocated on demand.
///
/// Blocks are written through (every change reaches the file before the
/// method returns, and callers flush the file where a later metadata write
/// depends on it), except the updates of guest data allocations, which stay
/// in the cache until the driver writes them back (``defersWrites``, QEMU's
/// write-back refcount cache and its dependencies). Every method must be
/// called with the driver's metadata lock held.
@BlockActor
final class Qcow2Refcounts {
  /// A refcount block was allocated where the caller's clusters might go:
  /// search again (QEMU's -EAGAIN from `alloc_refcount_block`).
  struct Retry: Error {}

  let clusterBits: Int64
  let refcountBits: Int
  /// log2 of the entries per refcount block.
  let blockBits: Int64
  /// Where the refcount table is.
  var tableOffset: Int64
  /// The refcount table's entries (the offsets of refcount blocks).
  var table: [UInt64] { didSet { usedTableEntries = table.usedEntryCount } }
  /// How many entries of ``table`` the overlap check looks at: up to the
  /// last one in use (QEMU's `max_refcount_table_index` + 1).
  private(set) var usedTableEntries: Int
  /// Cached refcount blocks by offset (always equal to the file's).
  var blocks: [Int64: Qcow2RefcountBlock] = [:]
  /// How many refcount blocks ``blocks`` keeps (`refcount-cache-size`).
  var blockCacheCapacity = 64
  /// Checks a write of refcount metadata (host offset, length, the sections
  /// it legitimately belongs to) before it reaches the file: the driver's
  /// overlap check. Nil: unchecked.
  var checkWrite: (@BlockActor (Int64, Int64, Qcow2OverlapSections) async throws -> Void)?
  /// Refcount blocks a write to the file failed for: QEMU's cache keeps
  /// them dirty, and closing the image tries them again.
  var unwrittenBlocks: Set<Int64> = []
  /// Whether ``update(_:count:addend:file:)`` keeps changed blocks in the
  /// cache instead of writing them (QEMU's write-back refcount cache). The
  /// driver sets it around guest data allocations only, and writes the
  /// blocks back before the L2 entries that use the clusters (with lazy
  /// refcounts: when the image stops being dirty).
  var defersWrites = false
  /// Cached blocks with changes not yet written (see ``defersWrites``).
  var deferredBlocks: Set<Int64> = []

  /// Forgets the cached blocks that are on disk as cached, keeping those
  /// with deferred updates or a failed write (`cache-clean-interval`).
  func dropCleanBlocks() {
    blocks = blocks.filter { deferredBlocks.contains($0.key) || unwrittenBlocks.contains($0.key) }
  }
  /// The lowest cluster that may be free (QEMU's `free_cluster_index`).
  private(set) var freeClusterIndex: Int64 = 0
  /// Where the next compressed cluster may start inside a partly used
  /// cluster, 0 when none (QEMU's `free_byte_offset`).
  private var freeByteOffset: Int64 = 0

  /// Refcount handling for an image with this header and refcount table.
  init(header: Qcow2Header, table: [UInt64]) {
    clusterBits = Int64(header.clusterBits)
    refcountBits = header.refcountBits
    blockBits = Int64(header.clusterBits) + 3 - Int64(header.refcountOrder)
    tableOffset = Int64(header.refcountTableOffset)
    self.table = table
    usedTableEntries = table.usedEntryCount
  }

  var clusterSize: Int64 { 1 << clusterBits }

  /// The refcount of `cluster` (QEMU's `qcow2_get_refcount`): 0 for clusters
  /// no refcount block covers.
  func refcount(of cluster: Int64, file: BlockNode) async throws -> UInt64 {
    let index = Int(cluster >> blockBits)
    guard index < table.count else { return 0 }
    let blockOffset = Int64(table[index] & Qcow2Entry.offsetMask)
    if blockOffset == 0 { return 0 }
    try validateBlockOffset(blockOffset, index: index)
    let block = try await cachedBlock(at: blockOffset, file: file)
    return block[Int(cluster & ((1 << blockBits) - 1))]
  }

  /// Allocates `count` contiguous clusters with refcount 1 and returns the
  /// host offset of the first (QEMU's `qcow2_alloc_clusters`).
  /// `structure` names what the clusters are for when an allocation at
  /// offset 0 (free refcounts where the header is: the refcounts are
  /// corrupt) is to be refused as QEMU refuses it for that structure
  /// ("Preventing invalid allocation of L2 table at offset 0").
  func allocate(clusters count: Int64, file: BlockNode, structure: String? = nil) async throws
    -> Int64
  {
    try await file.emit(.clusterAlloc)
    while true {
      let first = try await findFree(count, file: file, structure: structure)
      do {
        _ = try await update(first, count: count, addend: 1, file: file)
        return first << clusterBits
      } catch is Retry {
        continue
      }
    }
  }

  /// Allocates as many of the `count` clusters from host `offset` on as are
  /// free, up to the first one in use, and returns how many (QEMU's
  /// `qcow2_alloc_clusters_at`; the free-cluster index does not move).
  func allocate(at offset: Int64, clusters count: Int64, file: BlockNode) async throws -> Int64 {
    let first = offset >> clusterBits
    while true {
      var free: Int64 = 0
      while free < count, try await refcount(of: first + free, file: file) == 0 { free += 1 }
      guard free > 0 else { return 0 }
      do {
        _ = try await update(first, count: free, addend: 1, file: file)
        return free
      } catch is Retry {
        continue
      }
    }
  }

  /// Allocates `size` bytes (at most a cluster) for compressed data, packed
  /// after the previous compressed cluster when it fits (QEMU's
  /// `qcow2_alloc_bytes`): every cluster the bytes touch gains a reference.
  func allocateBytes(_ size: Int64, file: BlockNode) async throws -> Int64 {
    try await file.emit(.clusterAllocBytes)
    var offset = freeByteOffset
    if offset != 0, try await refcount(of: offset >> clusterBits, file: file) == maxRefcount {
      offset = 0
    }
    var freeInCluster = clusterSize - (offset & (clusterSize - 1))
    while true {
      if offset == 0 || freeInCluster < size {
        let newCluster = try await findFree(1, file: file) << clusterBits
        if newCluster == 0 {
          throw BlockError(.ioError, "qcow2: refusing to allocate compressed data at offset 0")
        }
        if offset == 0 || (offset + clusterSize - 1) & ~(clusterSize - 1) != newCluster {
          offset = newCluster
          freeInCluster = clusterSize
        } else {
          freeInCluster += clusterSize
        }
      }
      let first = offset >> clusterBits
      let last = (offset + size - 1) >> clusterBits
      do {
        _ = try await update(first, count: last - first + 1, addend: 1, file: file)
        break
      } catch is Retry {
        offset = 0
      }
    }
    freeByteOffset = (offset + size) & (clusterSize - 1) == 0 ? 0 : offset + size
    return offset
  }

  /// Starts the free-cluster search from the beginning again.
  func resetAllocationHints() {
    freeClusterIndex = 0
    freeByteOffset = 0
  }

  private var maxRefcount: UInt64 { refcountBits == 64 ? .max : (1 << UInt64(refcountBits)) - 1 }

  /// Decrements the refcounts of the clusters covering `bytes` at `offset`
  /// (QEMU's `qcow2_free_clusters`); returns the offsets of clusters that
  /// became free.
  func free(offset: Int64, bytes: Int64, file: BlockNode) async throws -> [Int64] {
    guard bytes > 0 else { return [] }
    try await file.emit(.clusterFree)
    let first = offset >> clusterBits
    let last = (offset + bytes - 1) >> clusterBits
    return try await update(first, count: last - first + 1, addend: -1, file: file)
  }

  /// QEMU's `alloc_clusters_noref`: the first run of `count` free clusters
  /// from ``freeClusterIndex`` on, which moves past it.
  private func findFree(_ count: Int64, file: BlockNode, structure: String? = nil) async throws
    -> Int64
  {
    var found: Int64 = 0
    while found < count {
      let cluster = freeClusterIndex
      freeClusterIndex += 1
      found = try await refcount(of: cluster, file: file) == 0 ? found + 1 : 0
    }
    let first = freeClusterIndex - count
    if first == 0, let structure {
      throw BlockError(
        .ioError,
        "\(Qcow2Driver.corruptionPrefix)Preventing invalid allocation of \(structure) at offset 0")
    }
    // Cluster 0 (the header) and the refcount table are always in use: free
    // refcounts there mean the refcounts are corrupt, and allocating would
    // overwrite them. The overlap check reports it as QEMU's does when the
    // write lands there (marking the image corrupt); without overlap checks
    // the allocation fails all the same.
    if first == 0 || overlapsTable(first << clusterBits, length: count << clusterBits) {
      try await checkWrite?(first << clusterBits, count << clusterBits, [])
      throw BlockError(
        .ioError,
        "Image is corrupt: Preventing invalid allocation of a cluster at offset 0x\(String(first << clusterBits, radix: 16))"
      )
    }
    return first
  }

  /// Whether `length` bytes at `offset` overlap the refcount table.
  private func overlapsTable(_ offset: Int64, length: Int64) -> Bool {
    offset < tableOffset + Int64(table.count) * 8 && tableOffset < offset + length
  }

  /// Refuses a refcount block offset that cannot be one: unaligned (QEMU's
  /// message), in the header cluster, or inside the refcount table (a loop).
  private func validateBlockOffset(_ offset: Int64, index: Int) throws {
    let unaligned = offset & (clusterSize - 1) != 0
    guard unaligned || offset < clusterSize || overlapsTable(offset, length: clusterSize) else {
      return
    }
    // The messages are built only for a bad offset: this runs for every
    // refcount lookup.
    let location = "(reftable index: 0x\(String(index, radix: 16)))"
    let hex = "0x\(String(offset, radix: 16))"
    if unaligned {
      throw BlockError(.ioError, "Image is corrupt: Refblock offset \(hex) unaligned \(location)")
    }
    throw BlockError(
      .ioError, "Image is corrupt: Refblock offset \(hex) overlaps with metadata \(location)")
  }

  /// Adds `addend` to the refcounts of `count` clusters from `first`, block
  /// by block, writing each changed range of a block; returns the offsets of
  /// clusters whose refcount reached zero.
  func update(_ first: Int64, count: Int64, addend: Int64, file: BlockNode) async throws
    -> [Int64]
  {
    // Make sure every block exists before changing anything, so that a
    // retry has nothing to undo. On a retry the search starts again at the
    // same clusters (QEMU: "try the same ones first").
    var cluster = first
    do {
      while cluster < first + count {
        // QEMU's update_refcount enters alloc_refcount_block, which emits
        // the event, for every refcount block it touches.
        try await file.emit(.refblockAlloc)
        if try await blockOffset(for: cluster, allocating: addend > 0, file: file) == nil {
          throw Retry()
        }
        cluster = ((cluster >> blockBits) + 1) << blockBits
      }
    } catch let retry as Retry {
      freeClusterIndex = min(freeClusterIndex, first)
      throw retry
    }
    var freed: [Int64] = []
    cluster = first
    while cluster < first + count {
      let blockEnd = min(first + count, ((cluster >> blockBits) + 1) << blockBits)
      guard let offset = try await blockOffset(for: cluster, allocating: false, file: file) else {
        throw BlockError(.ioError, "qcow2: refcount block vanished")
      }
      try await file.emit(.refblockLoad)
      // Taken out of the cache while it changes, so that the change happens
      // in place (no copy of the whole block); what the change replaced
      // comes back when it fails, so that the cache keeps the file's counts.
      _ = try await cachedBlock(at: offset, file: file)
      guard var block = blocks.removeValue(forKey: offset) else {
        throw BlockError(.ioError, "qcow2: refcount block vanished")
      }
      let base = (cluster >> blockBits) << blockBits
      let start = Int(cluster - base) * refcountBits / 8
      let end = (Int(blockEnd - base) * refcountBits + 7) / 8
      let previous = Array(block.bytes[start..<end])
      do {
        for index in cluster..<blockEnd {
          let old = block[Int(index - base)]
          let new = Int64(bitPattern: old) + addend
          if new < 0 || UInt64(new) > block.maxValue {
            throw BlockError(.invalidArgument, "qcow2: refcount of cluster \(index) out of range")
          }
          block[Int(index - base)] = UInt64(new)
          if new == 0 {
            freed.append(index << clusterBits)
            freeClusterIndex = min(freeClusterIndex, index)
            blocks[index << clusterBits] = nil
            deferredBlocks.remove(index << clusterBits)
            // Compressed data must not be packed into a cluster that was freed
            // (and may be reallocated whole). QEMU 7.2 keeps packing there and
            // only its overlap check stops the write.
            if freeByteOffset >> clusterBits == index { freeByteOffset = 0 }
          }
        }
        if defersWrites {
          blocks[offset] = block
          deferredBlocks.insert(offset)
          cluster = blockEnd
          continue
        }
        try await checkWrite?(offset + Int64(start), Int64(end - start), .refcountBlock)
        try await recordingFailure(at: offset) {
          try await file.emit(.refblockUpdatePart)
          try await file.write(at: offset + Int64(start), bytes: Array(block.bytes[start..<end]))
        }
      } catch {
        block.restore(previous, at: start)
        blocks[offset] = block
        throw error
      }
      blocks[offset] = block
      cluster = blockEnd
    }
    return freed
  }

  /// The refcount block covering `cluster`; when there is none and
  /// `allocating`, allocates one (QEMU's `alloc_refcount_block`) and returns
  /// nil so that the caller searches again.
  private func blockOffset(for cluster: Int64, allocating: Bool, file: BlockNode) async throws
    -> Int64?
  {
    let index = Int(cluster >> blockBits)
    if index < table.count, table[index] & Qcow2Entry.offsetMask != 0 {
      let offset = Int64(table[index] & Qcow2Entry.offsetMask)
      try validateBlockOffset(offset, index: index)
      return offset
    }
    guard allocating else {
      throw BlockError(.ioError, "qcow2: cluster \(cluster) has no refcount block")
    }
    // A new block is written through, and what was deferred goes first
    // (QEMU flushes its refcount cache here).
    try await writeDeferred(file: file)
    let deferring = defersWrites
    defersWrites = false
    defer { defersWrites = deferring }
    let newBlock = try await findFree(1, file: file, structure: "refcount block") << clusterBits
    var block = Qcow2RefcountBlock(clusterSize: Int(clusterSize), bits: refcountBits)
    if (newBlock >> clusterBits) >> blockBits == Int64(index) {
      // The block describes itself.
      block[Int((newBlock >> clusterBits) & ((1 << blockBits) - 1))] = 1
    } else {
      // Counted in another block, which may itself need allocating first: a
      // retry then starts the caller's search over (QEMU's nested -EAGAIN).
      _ = try await update(newBlock >> clusterBits, count: 1, addend: 1, file: file)
      try await file.flush()
    }
    try await checkWrite?(newBlock, clusterSize, .refcountBlock)
    blocks[newBlock] = block
    try await file.emit(.refblockAllocWrite)
    try await recordingFailure(at: newBlock) {
      try await file.emit(.refblockUpdatePart)
      try await file.write(at: newBlock, bytes: block.bytes)
    }
    try await file.flush()
    guard index < table.count else {
      // The table is full: new refcount structures go past everything in use.
      try await file.emit(.reftableGrow)
      let usedBlocks =
        (max(cluster, newBlock >> clusterBits) + 1 + (1 << blockBits) - 1) >> blockBits
      try await growTable(
        areaStart: (usedBlocks << blockBits) << clusterBits, newBlockIndex: index,
        newBlock: newBlock, file: file)
      return nil
    }
    var entry = [UInt8](repeating: 0, count: 8)
    entry.setUInt64(UInt64(newBlock), at: 0)
    try await checkWrite?(tableOffset + Int64(index) * 8, 8, .refcountTable)
    try await file.emit(.refblockAllocHookup)
    try await file.write(at: tableOffset + Int64(index) * 8, bytes: entry)
    try await file.flush()
    table[index] = UInt64(newBlock)
    return nil
  }

  /// Runs a write of the refcount block at `offset`, remembering the block
  /// when it fails.
  private func recordingFailure(at offset: Int64, _ write: @BlockActor () async throws -> Void)
    async throws
  {
    do {
      try await write()
      unwrittenBlocks.remove(offset)
    } catch {
      unwrittenBlocks.insert(offset)
      throw error
    }
  }

  /// Writes the blocks whose changes were deferred (QEMU's refcount cache
  /// write-back), whole, in offset order.
  func writeDeferred(file: BlockNode) async throws {
    for offset in deferredBlocks.sorted() {
      guard let block = blocks[offset] else {
        deferredBlocks.remove(offset)
        continue
      }
      try await checkWrite?(offset, clusterSize, .refcountBlock)
      try await recordingFailure(at: offset) {
        try await file.emit(.refblockUpdatePart)
        try await file.write(at: offset, bytes: block.bytes)
      }
      deferredBlocks.remove(offset)
    }
  }

  /// The refcount block at `offset`, from the cache or the file. A full
  /// cache drops a block without deferred changes, or writes one first.
  func cachedBlock(at offset: Int64, file: BlockNode) async throws -> Qcow2RefcountBlock {
    if let block = blocks[offset] { return block }
    let bytes = try await file.read(at: offset, count: Int(clusterSize))
    let block = Qcow2RefcountBlock(bytes: bytes, bits: refcountBits)
    if blocks.count >= blockCacheCapacity,
      let victim = blocks.keys.first(where: { !deferredBlocks.contains($0) })
        ?? blocks.keys.first
    {
      if deferredBlocks.contains(victim) { try await writeDeferred(file: file) }
      blocks[victim] = nil
    }
    blocks[offset] = block
    return block
  }
}
