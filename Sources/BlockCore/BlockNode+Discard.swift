extension BlockNode {
  /// Discards `count` bytes at `offset` (QEMU's `bdrv_co_pdiscard`).
  ///
  /// Advisory: a no-op when the node's discard mode is `ignore`, and ENOTSUP from
  /// the driver is success. The range is cut into pieces that reach the
  /// discard alignment (the head and tail pieces may be unaligned) and are at
  /// most the driver's maximum.
  public func discard(at offset: Int64, count bytes: Int64) async throws {
    try checkBitmapsWritable()
    try checkWritable()
    try Self.checkRange(offset, bytes, limitTo32Bit: false)
    guard options.discard == .unmap, bytes > 0 else { return }
    let requestAlign = limits.requestAlignment
    let align = max(limits.pdiscardAlignment, requestAlign)
    let maxDiscard = alignDown(BlockLimits.minNonZero(limits.maxPdiscard, Int64.max), align)
    try await inFlight {
      let request = tracked.begin(.discard, offset: offset, bytes: bytes)
      defer { tracked.end(request) }
      await tracked.waitForConflicts(request)
      try runBeforeWriteHooks(offset: offset, bytes: bytes, kind: .discard)
      var head = offset % align
      var tail = (offset + bytes) % align
      var position = offset
      var remaining = bytes
      while remaining > 0 {
        var count = remaining
        if head != 0 {
          count = min(remaining, align - head)
          if count % requestAlign != 0 { count %= requestAlign }
          head = (head + count) % align
        } else if tail != 0 {
          if count > align {
            count -= tail
          } else if tail % requestAlign != 0 && tail > requestAlign {
            tail %= requestAlign
            count -= tail
          }
        }
        count = min(count, maxDiscard)
        do {
          try await driver.discard(self, offset: position, length: count)
        } catch let error as BlockError where error.code == BlockError.notSupportedCode {
          // Discard is advisory.
        }
        position += count
        remaining -= count
      }
      writeGeneration &+= 1
      markDirty(offset: offset, bytes: bytes)
    }
  }
}
