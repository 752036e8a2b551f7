import BlockCore

extension Qcow2Driver {
  /// The persistent bitmaps of the image (its bitmap directory, as
  /// `qemu-img info` lists them).
  public func persistentBitmaps(_ node: BlockNode) async throws -> [Qcow2BitmapInfo] {
    try await lock.withLock {
      try await Qcow2BitmapInfo.readAll(from: fileNode(node), header: header)
    }
  }

  /// Reads the persistent bitmap `name` into a new ``DirtyBitmap`` of its
  /// granularity (QEMU's `load_bitmap` and `load_bitmap_data`): its table
  /// (one entry per data cluster, each covering `clusterSize * 8` chunks)
  /// must have exactly the entries the disk needs; an entry without a data
  /// cluster is all clean, or all dirty with its flag bit 0 set; a data
  /// cluster holds the chunks' bits least significant first. The bitmap is
  /// not attached to the node. An in-use bitmap (not stored consistently
  /// when the image was last closed) is refused, as QEMU marks it
  /// inconsistent.
  public func loadPersistentBitmap(_ node: BlockNode, named name: String) async throws
    -> DirtyBitmap
  {
    try await lock.withLock {
      let file = try fileNode(node)
      let bitmaps = try await Qcow2BitmapInfo.readAll(from: file, header: header)
      guard let info = bitmaps.first(where: { $0.name == name }) else {
        throw BlockError(.noSuchFileOrDirectory, "Bitmap '\(name)' not found")
      }
      if info.inUse {
        throw BlockError(
          .invalidArgument,
          "Bitmap '\(name)' is inconsistent and cannot be used")
      }
      return try await loadBitmapData(file, info)
    }
  }

  /// The data of bitmap `info` (not in use) as a new ``DirtyBitmap``,
  /// enabled when the bitmap is `auto`; the caller holds the lock.
  func loadBitmapData(_ file: BlockNode, _ info: Qcow2BitmapInfo) async throws -> DirtyBitmap {
    let name = info.name
    let bitmap = DirtyBitmap(name: name, granularity: Int64(info.granularity))
    let diskSize = Int64(header.size)
    let chunks = (diskSize + bitmap.granularity - 1) / bitmap.granularity
    let bitsPerCluster = header.clusterSize * 8
    let entriesNeeded = (chunks + bitsPerCluster - 1) / bitsPerCluster
    guard Int64(info.tableEntries) == entriesNeeded else {
      throw BlockError(.invalidArgument, "Bitmap '\(name)' has an invalid table size")
    }
    let table = try await file.read(
      at: Int64(info.tableOffset), count: Int(info.tableEntries) * 8
    ).bigEndianUInt64s(count: Int(info.tableEntries))
    let bytesPerCluster = bitsPerCluster * bitmap.granularity
    for (index, entry) in table.enumerated() {
      let start = Int64(index) * bytesPerCluster
      let count = min(diskSize - start, bytesPerCluster)
      let dataOffset = Int64(entry & 0x00FF_FFFF_FFFF_FE00)
      guard entry & 0xFF00_0000_0000_01FE == 0,
        dataOffset & (header.clusterSize - 1) == 0,
        dataOffset == 0 || entry & 1 == 0
      else {
        throw BlockError(.invalidArgument, "Bitmap '\(name)' has an invalid table entry")
      }
      if dataOffset == 0 {
        if entry & 1 != 0 { bitmap.set(offset: start, bytes: count) }
        continue
      }
      let data = try await file.read(at: dataOffset, count: Int(header.clusterSize))
      let chunksHere = (count + bitmap.granularity - 1) / bitmap.granularity
      var chunk: Int64 = 0
      while chunk < chunksHere {
        let byte = data[Int(chunk >> 3)]
        if byte == 0 {
          chunk = (chunk | 7) + 1
          continue
        }
        if byte & (1 << UInt8(chunk & 7)) != 0 {
          bitmap.set(offset: start + chunk * bitmap.granularity, bytes: 1)
        }
        chunk += 1
      }
    }
    bitmap.isEnabled = info.auto
    return bitmap
  }
}
