extension BlockNode {
  /// Reads `iov.count` bytes at `offset` (QEMU's `bdrv_co_preadv`).
  ///
  /// Unaligned reads are widened to the request alignment with padding buffers;
  /// the request is tracked and waits for overlapping serialising requests;
  /// bytes past the node's end read as zeroes; copy-on-read applies when enabled
  /// on the node or requested with ``RequestFlags/copyOnRead``.
  public func read(at offset: Int64, into iov: IOVector, flags: RequestFlags = []) async throws {
    let bytes = Int64(iov.count)
    try checkInserted()
    try Self.checkRange(offset, bytes, limitTo32Bit: true)
    guard bytes > 0 else { return }
    incrementInFlight()
    defer { decrementInFlight() }
    var flags = flags.intersection([.copyOnRead, .serialising])
    if copyOnReadCount > 0 { flags.insert(.copyOnRead) }
    let align = limits.requestAlignment
    if offset % align == 0 && bytes % align == 0 {
      // Aligned: no padding (the common case, kept free of allocations).
      let request = tracked.begin(.read, offset: offset, bytes: bytes)
      defer { tracked.end(request) }
      try await alignedRead(request, offset: offset, bytes: bytes, iov: iov, flags: flags)
      return
    }
    let padded = PaddedRequest(
      offset: offset, bytes: bytes, alignment: align,
      memoryAlignment: limits.optMemAlignment, iov: iov)
    let request = tracked.begin(.read, offset: padded.offset, bytes: padded.bytes)
    defer { tracked.end(request) }
    try await alignedRead(
      request, offset: padded.offset, bytes: padded.bytes, iov: padded.iov, flags: flags)
  }

  /// Convenience: reads `count` bytes at `offset` into a new array.
  public func read(at offset: Int64, count: Int) async throws -> [UInt8] {
    let iov = IOVector(allocating: count)
    try await read(at: offset, into: iov)
    return iov.toArray()
  }

  /// An aligned read of a tracked request (QEMU's `bdrv_aligned_preadv`):
  /// serialisation, copy-on-read, end-of-file zero fill and fragmentation.
  func alignedRead(
    _ request: TrackedRequest, offset: Int64, bytes: Int64, iov: IOVector, flags: RequestFlags
  ) async throws {
    let align = limits.requestAlignment
    assert(offset % align == 0 && bytes % align == 0 && Int64(iov.count) == bytes)
    if flags.contains(.copyOnRead) {
      await tracked.makeSerialising(request, alignment: clusterSize)
    } else if flags.contains(.serialising) {
      await tracked.makeSerialising(request, alignment: 1)
    } else {
      await tracked.waitForConflicts(request)
    }

    if flags.contains(.copyOnRead) {
      let (allocated, count) = try await isAllocated(offset: offset, bytes: bytes)
      if !allocated || count != bytes {
        try await copyOnRead(offset: offset, bytes: bytes, into: iov)
        return
      }
    }

    let maxTransfer = alignDown(BlockLimits.minNonZero(limits.maxTransfer, Int64(Int32.max)), align)
    var readable = alignUp(max(0, length - offset), align)
    if bytes <= readable && bytes <= maxTransfer {
      try await driver.read(self, offset: offset, length: bytes, into: iov, flags: [])
      return
    }
    var done: Int64 = 0
    while done < bytes {
      let remaining = bytes - done
      if readable > 0 {
        let count = min(remaining, readable, maxTransfer)
        try await driver.read(
          self, offset: offset + done, length: count,
          into: iov.slice(Int(done), Int(count)), flags: [])
        readable -= count
        done += count
      } else {
        iov.fill(0, at: Int(done), count: Int(remaining))
        done = bytes
      }
    }
  }

  /// The largest bounce buffer copy-on-read uses at once.
  static let maxBounceBuffer: Int64 = 16 << 20

  /// Copies the unallocated parts of the cluster-rounded range containing the
  /// request into this node, and reads the allocated parts straight into the
  /// caller's vector (QEMU's `bdrv_co_do_copy_on_readv`).
  ///
  /// Copied data goes through a bounce buffer so a caller that scribbles over
  /// its buffer cannot change what is written; all-zero chunks become
  /// zero-writes. Chunks are at most maxTransfer and 16 MiB, and the copy stops
  /// at the end of the node.
  func copyOnRead(offset: Int64, bytes: Int64, into iov: IOVector) async throws {
    let cluster = clusterSize
    var chunkOffset = alignDown(offset, cluster)
    var remaining = alignUp(offset + bytes, cluster) - chunkOffset
    var skip = offset - chunkOffset
    var progress: Int64 = 0
    let maxTransfer = alignDown(
      BlockLimits.minNonZero(limits.maxTransfer, Self.maxRequestBytes), limits.requestAlignment)
    var bounce: IOVector?
    while remaining > 0 {
      var (allocated, count) = try await isAllocated(
        offset: chunkOffset, bytes: min(remaining, maxTransfer))
      if !allocated && count == 0 { break }  // The node ends inside the cluster.
      let skipped = min(count, skip)
      let wanted = min(count - skipped, bytes - progress)
      if !allocated {
        count = min(count, Self.maxBounceBuffer)
        if bounce == nil || bounce!.count < Int(count) {
          let needed = max(count, remaining - count)
          let length = min(needed, min(maxTransfer, Self.maxBounceBuffer))
          bounce = IOVector(allocating: Int(max(length, count)), alignment: limits.optMemAlignment)
        }
        let buffer = bounce!.slice(0, Int(count))
        try await driver.read(self, offset: chunkOffset, length: count, into: buffer, flags: [])
        try await emit(.corWrite)
        if capabilities.canWriteZeroes && buffer.isZero() {
          try await pwriteZeroes(offset: chunkOffset, bytes: count, flags: .writeUnchanged)
        } else {
          try await driverWrite(
            offset: chunkOffset, bytes: count, iov: buffer,
            flags: .writeUnchanged)
        }
        if wanted > 0 {
          iov.copy(from: buffer, sourceOffset: Int(skipped), at: Int(progress), count: Int(wanted))
        }
      } else if wanted > 0 {
        try await driver.read(
          self, offset: offset + progress, length: wanted,
          into: iov.slice(Int(progress), Int(wanted)), flags: [])
      }
      chunkOffset += count
      remaining -= count
      progress += count - skipped
      skip -= skipped
    }
  }
}

/// A request widened to the alignment, with padding buffers around the caller's
/// vector (QEMU's `BdrvRequestPadding`).
///
/// When head and tail padding fall within one or two adjacent aligned blocks
/// the padding shares one buffer, so read-modify-write reads it in one request
/// (``mergedReads``).
struct PaddedRequest {
  let offset: Int64
  let bytes: Int64
  let head: Int64
  let tail: Int64
  let iov: IOVector
  /// Buffer holding the head block, or head and tail blocks when merged.
  let buffer: IOVector?
  /// Buffer holding the tail block (part of ``buffer`` when merged).
  let tailBuffer: IOVector?
  /// Whether one read of ``buffer`` covers the whole padded request.
  let mergedReads: Bool

  var isPadded: Bool { head != 0 || tail != 0 }

  init(offset: Int64, bytes: Int64, alignment: Int64, memoryAlignment: Int, iov: IOVector?) {
    head = offset % alignment
    let endRemainder = (offset + bytes) % alignment
    tail = endRemainder == 0 ? 0 : alignment - endRemainder
    self.offset = offset - head
    self.bytes = head + bytes + tail
    guard head != 0 || tail != 0 else {
      self.iov = iov ?? IOVector()
      buffer = nil
      tailBuffer = nil
      mergedReads = false
      return
    }
    let sum = head + bytes + tail
    let bufferLength = (sum > alignment && head != 0 && tail != 0) ? 2 * alignment : alignment
    let padding = IOVector(allocating: Int(bufferLength), alignment: memoryAlignment)
    buffer = padding
    mergedReads = sum == bufferLength
    tailBuffer = tail != 0 ? padding.slice(Int(bufferLength - alignment), Int(alignment)) : nil
    var combined = IOVector()
    if head != 0 { combined.append(padding.slice(0, Int(head))) }
    if let iov { combined.append(iov) }
    if tail != 0 {
      let tailStart = Int(bufferLength - tail)
      combined.append(padding.slice(tailStart, Int(tail)))
    }
    self.iov = combined
  }
}
