extension BlockNode {
  /// Writes `iov` at `offset` (QEMU's `bdrv_co_pwritev`).
  ///
  /// An unaligned write becomes a read-modify-write of its head and tail blocks:
  /// the request serialises at the alignment, reads the padding (once, when head
  /// and tail fall in adjacent blocks), then writes the whole aligned range.
  /// Writes past the end grow the node. ``RequestFlags/zeroWrite`` makes this a
  /// zero-write (see ``writeZeroes(at:count:flags:)``).
  public func write(at offset: Int64, from iov: IOVector, flags: RequestFlags = []) async throws {
    if flags.contains(.zeroWrite) {
      try await writeZeroes(at: offset, count: Int64(iov.count), flags: flags)
      return
    }
    let bytes = Int64(iov.count)
    try checkWritable()
    try Self.checkRange(offset, bytes, limitTo32Bit: true)
    let align = limits.requestAlignment
    if flags.contains(.noFallback) && (offset % align != 0 || bytes % align != 0) {
      throw BlockError.notSupported("unaligned request with NO_FALLBACK")
    }
    guard bytes > 0 else { return }
    incrementInFlight()
    defer { decrementInFlight() }
    if offset % align == 0 && bytes % align == 0 {
      // Aligned: no read-modify-write.
      let request = tracked.begin(.write, offset: offset, bytes: bytes)
      defer { tracked.end(request) }
      try await alignedWrite(request, offset: offset, bytes: bytes, iov: iov, flags: flags)
      return
    }
    // Unaligned: read-modify-write of the head and tail blocks.
    let padded = PaddedRequest(
      offset: offset, bytes: bytes, alignment: align,
      memoryAlignment: limits.optMemAlignment, iov: iov)
    let request = tracked.begin(.write, offset: padded.offset, bytes: padded.bytes)
    defer { tracked.end(request) }
    await tracked.makeSerialising(request, alignment: align)
    try await readPadding(request, padded, zeroMiddle: false)
    try await alignedWrite(
      request, offset: padded.offset, bytes: padded.bytes, iov: padded.iov, flags: flags)
  }

  /// Convenience: writes an array of bytes at `offset`.
  public func write(at offset: Int64, bytes: [UInt8], flags: RequestFlags = []) async throws {
    let iov = IOVector(allocating: bytes.count)
    bytes.withUnsafeBytes { iov.copyIn($0) }
    try await write(at: offset, from: iov, flags: flags)
  }

  /// Reads the head and tail blocks of a padded write (QEMU's
  /// `bdrv_padding_rmw_read`), once when they are merged.
  func readPadding(_ request: TrackedRequest, _ padded: PaddedRequest, zeroMiddle: Bool)
    async throws
  {
    let align = limits.requestAlignment
    guard let buffer = padded.buffer else { return }
    if padded.head != 0 || padded.mergedReads {
      let count = padded.mergedReads ? Int64(buffer.count) : align
      if padded.head != 0 { try await emit(.pwritevRmwHead) }
      if padded.mergedReads && padded.tail != 0 { try await emit(.pwritevRmwTail) }
      try await alignedRead(
        request, offset: padded.offset, bytes: count,
        iov: buffer.slice(0, Int(count)), flags: [])
      if padded.head != 0 { try await emit(.pwritevRmwAfterHead) }
      if padded.mergedReads && padded.tail != 0 { try await emit(.pwritevRmwAfterTail) }
    }
    if padded.tail != 0 && !padded.mergedReads, let tailBuffer = padded.tailBuffer {
      try await emit(.pwritevRmwTail)
      try await alignedRead(
        request, offset: padded.offset + padded.bytes - align, bytes: align,
        iov: tailBuffer, flags: [])
      try await emit(.pwritevRmwAfterTail)
    }
    if zeroMiddle {
      let middle = buffer.count - Int(padded.head) - Int(padded.tail)
      if middle > 0 { buffer.fill(0, at: Int(padded.head), count: middle) }
    }
  }

  /// An aligned write of a tracked request (QEMU's `bdrv_aligned_pwritev`):
  /// waits for conflicts, runs before-write hooks, detects zeroes, fragments at
  /// maxTransfer with FUA kept for the last fragment only, then records the write.
  func alignedWrite(
    _ request: TrackedRequest, offset: Int64, bytes: Int64, iov: IOVector?, flags: RequestFlags
  ) async throws {
    try checkBitmapsWritable()
    let align = limits.requestAlignment
    assert(offset % align == 0 && bytes % align == 0)
    var flags = flags
    if flags.contains(.serialising) {
      await tracked.makeSerialising(request, alignment: clusterSize)
    } else {
      await tracked.waitForConflicts(request)
    }
    try runBeforeWriteHooks(offset: offset, bytes: bytes, kind: .write)

    if options.detectZeroes != .off && !flags.contains(.zeroWrite) && capabilities.canWriteZeroes,
      let iov, iov.isZero()
    {
      flags.insert(.zeroWrite)
      if options.detectZeroes == .unmap && options.discard == .unmap { flags.insert(.mayUnmap) }
    }

    let maxTransfer = alignDown(BlockLimits.minNonZero(limits.maxTransfer, Int64(Int32.max)), align)
    if flags.contains(.zeroWrite) {
      try await emit(.pwritevZero)
      try await pwriteZeroes(offset: offset, bytes: bytes, flags: flags)
    } else if flags.contains(.writeCompressed) {
      try await driver.writeCompressed(self, offset: offset, length: bytes, from: iov!)
      writeGeneration &+= 1
    } else {
      let iov = iov!
      try await emit(.pwritev)
      var done: Int64 = 0
      while done < bytes {
        let count = min(bytes - done, maxTransfer)
        var fragmentFlags = flags
        if done + count < bytes && !capabilities.supportedWriteFlags.contains(.fua) {
          // FUA emulated by a flush: only after the last fragment.
          fragmentFlags.remove(.fua)
        }
        try await driverWrite(
          offset: offset + done, bytes: count,
          iov: iov.slice(Int(done), Int(count)), flags: fragmentFlags)
        done += count
      }
    }
    try await emit(.pwritevDone)
    finishWrite(offset: offset, bytes: bytes)
  }

  /// Records a completed write: the node grows, the highest offset and the
  /// dirty bitmaps are updated.
  func finishWrite(offset: Int64, bytes: Int64) {
    length = max(length, Self.sectorRounded(offset + bytes))
    highestOffsetWritten = max(highestOffsetWritten, offset + bytes)
    markDirty(offset: offset, bytes: bytes)
  }

  /// One driver write (QEMU's `bdrv_driver_pwritev`): passes the flags the
  /// driver supports, emulates FUA with a flush, and bumps the write generation
  /// before that flush so the flush reaches the disk.
  func driverWrite(offset: Int64, bytes: Int64, iov: IOVector, flags: RequestFlags) async throws {
    let passed = flags.intersection(capabilities.supportedWriteFlags)
    try await driver.write(self, offset: offset, length: bytes, from: iov, flags: passed)
    writeGeneration &+= 1
    if flags.contains(.fua) && !passed.contains(.fua) {
      try await flush()
    }
  }
}
