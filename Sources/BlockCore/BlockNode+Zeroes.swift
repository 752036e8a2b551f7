extension BlockNode {
  /// The largest zeroed bounce buffer the zero-write fallback allocates (QEMU's
  /// `MAX_BOUNCE_BUFFER`, 16 MiB); one buffer is reused for the whole request.
  public static let maxZeroBounceBuffer: Int64 = 16 << 20

  /// Makes `count` bytes at `offset` read as zeroes (QEMU's `bdrv_co_pwrite_zeroes`).
  ///
  /// MAY_UNMAP is kept only when the node's discard mode is `unmap`. An
  /// unaligned zero-write reads and rewrites its head and tail blocks; the
  /// aligned middle goes to the driver in pieces cut at the zero alignment and
  /// maximum, falling back to writing zeroes from a bounce buffer when the driver
  /// cannot (unless NO_FALLBACK, which fails with ENOTSUP).
  public func writeZeroes(at offset: Int64, count bytes: Int64, flags: RequestFlags = [])
    async throws
  {
    var flags = flags.union(.zeroWrite)
    if options.discard != .unmap { flags.remove(.mayUnmap) }
    try checkWritable()
    try Self.checkRange(offset, bytes, limitTo32Bit: false)
    let align = limits.requestAlignment
    if flags.contains(.noFallback) && (offset % align != 0 || bytes % align != 0) {
      throw BlockError.notSupported("unaligned request with NO_FALLBACK")
    }
    guard bytes > 0 else { return }
    try await inFlight {
      let request = tracked.begin(.write, offset: offset, bytes: bytes)
      defer { tracked.end(request) }
      try await zeroWriteRequest(request, offset: offset, bytes: bytes, flags: flags)
    }
  }

  /// Splits a zero-write into an RMW head, an aligned body and an RMW tail
  /// (QEMU's `bdrv_co_do_zero_pwritev`).
  private func zeroWriteRequest(
    _ request: TrackedRequest, offset: Int64, bytes: Int64, flags: RequestFlags
  ) async throws {
    let align = limits.requestAlignment
    var offset = offset
    var bytes = bytes
    let padded = PaddedRequest(
      offset: offset, bytes: bytes, alignment: align,
      memoryAlignment: limits.optMemAlignment, iov: nil)
    let dataFlags = flags.subtracting([.zeroWrite, .mayUnmap])
    if padded.isPadded, let buffer = padded.buffer {
      await tracked.makeSerialising(request, alignment: align)
      try await readPadding(request, padded, zeroMiddle: true)
      if padded.head != 0 || padded.mergedReads {
        let count = padded.mergedReads ? Int64(buffer.count) : align
        try await alignedWrite(
          request, offset: padded.offset, bytes: count,
          iov: buffer.slice(0, Int(count)), flags: dataFlags)
        if padded.mergedReads { return }
        offset += count - padded.head
        bytes -= count - padded.head
      }
    }
    if bytes >= align {
      let body = alignDown(bytes, align)
      try await alignedWrite(request, offset: offset, bytes: body, iov: nil, flags: flags)
      offset += body
      bytes -= body
    }
    if bytes > 0, let tailBuffer = padded.tailBuffer {
      try await alignedWrite(
        request, offset: offset, bytes: align, iov: tailBuffer,
        flags: dataFlags)
    }
  }

  /// Zero-writes an aligned range through the driver (QEMU's
  /// `bdrv_co_do_pwrite_zeroes`): head up to the zero alignment, body capped at
  /// the driver's maximum, tail; ENOTSUP falls back to a reused zeroed buffer.
  func pwriteZeroes(offset: Int64, bytes: Int64, flags: RequestFlags) async throws {
    let zeroFlags = capabilities.supportedZeroFlags
    if flags.subtracting(zeroFlags).contains(.noFallback) {
      throw BlockError.notSupported("zero-write without fallback is not supported")
    }
    let alignment = max(limits.pwriteZeroesAlignment, limits.requestAlignment)
    let maxZeroes = alignDown(
      BlockLimits.minNonZero(limits.maxPwriteZeroes, Int64.max), alignment)
    let maxTransfer = BlockLimits.minNonZero(limits.maxTransfer, Self.maxZeroBounceBuffer)
    var head = offset % alignment
    let tail = (offset + bytes) % alignment
    var offset = offset
    var remaining = bytes
    var needFlush = false
    var bounce: IOVector?
    while remaining > 0 {
      var count = remaining
      if head != 0 {
        count = min(remaining, maxTransfer, alignment - head)
        head = (head + count) % alignment
      } else if tail != 0 && count > alignment {
        count -= tail
      }
      count = min(count, maxZeroes)

      var supported = false
      if capabilities.canWriteZeroes {
        do {
          try await driver.writeZeroes(
            self, offset: offset, length: count,
            flags: flags.intersection(zeroFlags))
          writeGeneration &+= 1
          supported = true
          if flags.contains(.fua) && !zeroFlags.contains(.fua) { needFlush = true }
        } catch let error as BlockError where error.code == BlockError.notSupportedCode {
          supported = false
        }
      }
      if !supported {
        if flags.contains(.noFallback) {
          throw BlockError.notSupported("zero-write without fallback is not supported")
        }
        var writeFlags = flags.subtracting([.zeroWrite, .mayUnmap, .noFallback])
        if writeFlags.contains(.fua) && !capabilities.supportedWriteFlags.contains(.fua) {
          writeFlags.remove(.fua)
          needFlush = true
        }
        count = min(count, maxTransfer)
        if bounce == nil || bounce!.count < Int(count) {
          bounce = IOVector(allocating: Int(count), alignment: limits.optMemAlignment, zeroed: true)
        }
        try await driverWrite(
          offset: offset, bytes: count, iov: bounce!.slice(0, Int(count)),
          flags: writeFlags)
      }
      offset += count
      remaining -= count
    }
    if needFlush { try await flush() }
  }

  /// Writes zeroes wherever the node does not already read as zeroes (QEMU's
  /// `bdrv_make_zero`).
  public func makeZero(flags: RequestFlags = []) async throws {
    var offset: Int64 = 0
    while offset < length {
      let bytes = min(length - offset, Self.maxRequestBytes)
      let status = try await blockStatus(offset: offset, bytes: bytes, wantZero: true)
      if !status.flags.contains(.zero) {
        try await writeZeroes(at: offset, count: status.count, flags: flags)
      }
      offset += status.count
    }
  }
}
