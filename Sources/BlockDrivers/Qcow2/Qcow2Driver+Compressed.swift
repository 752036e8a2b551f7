import BlockCore

extension Qcow2Driver {
  /// Writes whole clusters compressed (QEMU's `qcow2_co_pwritev_compressed`):
  /// each cluster is compressed (zlib or zstd, by the image's type) and packed byte-granular after the previous
  /// compressed data; a cluster that does not shrink is written normally.
  /// Compressed data cannot overwrite allocated clusters (EIO, as QEMU); the
  /// last cluster of an image whose size is not cluster-aligned is padded
  /// with zeroes.
  public func writeCompressed(
    _ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector
  ) async throws {
    let clusterSize = header.clusterSize
    if hasDataFile {
      // QEMU cannot compress into an external data file either.
      throw BlockError.notSupported("qcow2: compressed writes need the data in the image file")
    }
    guard offset & (clusterSize - 1) == 0 else {
      throw BlockError(.invalidArgument, "qcow2: compressed writes must be cluster-aligned")
    }
    var done: Int64 = 0
    while done < length {
      let bytes = min(clusterSize, length - done)
      if bytes != clusterSize && offset + done + bytes != Int64(header.size) {
        throw BlockError(.invalidArgument, "qcow2: compressed writes must cover whole clusters")
      }
      try await writeCompressedCluster(
        node, offset: offset + done, data: iov.slice(Int(done), Int(bytes)))
      done += bytes
    }
  }

  private func writeCompressedCluster(_ node: BlockNode, offset: Int64, data: IOVector)
    async throws
  {
    let clusterSize = Int(header.clusterSize)
    let source = AlignedBuffer(count: clusterSize, zeroed: true)
    let output = AlignedBuffer(count: clusterSize - 1)
    let compression = header.compression
    let compressed = try source.withUnsafeMutableBytes { sourceBytes in
      data.copyOut(to: UnsafeMutableRawBufferPointer(rebasing: sourceBytes[0..<data.count]))
      return try output.withUnsafeMutableBytes { outputBytes in
        try Qcow2Compression.compress(
          compression, UnsafeRawBufferPointer(sourceBytes), into: outputBytes)
      }
    }
    guard let compressedLength = compressed else {
      try await write(node, offset: offset, length: Int64(data.count), from: data, flags: [])
      return
    }
    let file = try fileNode(node)
    try await lock.withLock {
      let l2Offset = try await l2TableForWrite(node, offset: offset)
      let l2Index = Int((offset >> Int64(header.clusterBits)) & (header.l2Entries - 1))
      let existing = l2Entry(try await l2Table(node, at: l2Offset), l2Index)
      if existing & Qcow2Entry.offsetMask != 0 {
        throw BlockError(.ioError, "qcow2: compressed data cannot overwrite an allocated cluster")
      }
      let refcounts = try refcountsForWrite()
      // Not lazy even with lazy refcounts: QEMU's compressed clusters make
      // the L2 cache depend on the refcount cache instead.
      let host = try await refcounts.allocateBytes(Int64(compressedLength), file: file)
      try await file.emit(.l2UpdateCompressed)
      try await refcountsReachedDisk(file)
      try await checkOverlapBeforeWrite(node, offset: host, size: Int64(compressedLength))
      try await file.emit(.writeCompressed)
      try await file.write(
        at: host,
        from: IOVector(output, range: 0..<compressedLength))
      try await file.flush()
      let sizeShift = 62 - (UInt64(header.clusterBits) - 8)
      let extraSectors = UInt64(((host + Int64(compressedLength) - 1) >> 9) - (host >> 9))
      let entry = Qcow2Entry.compressed | extraSectors << sizeShift | UInt64(host)
      try await writeL2Entries(
        node, l2Offset: l2Offset, first: l2Index, [entry], bitmaps: [0])
    }
    withExtendedLifetime(output) {}
  }
}
