extension BlockNode {
  /// The status of the range at `offset` in this node alone (QEMU's
  /// `bdrv_co_block_status`).
  ///
  /// The query is aligned to the request alignment for the driver and the answer
  /// trimmed back. RAW answers are resolved in the file child; ranges that are
  /// neither DATA nor ZERO read as zeroes when the driver has backing semantics
  /// and no backing node (or the backing node is shorter); with `wantZero`, a
  /// RECURSE answer asks the file child whether the data is a hole.
  public func blockStatus(offset: Int64, bytes: Int64, wantZero: Bool) async throws -> BlockStatus {
    try checkInserted()
    let total = length
    guard offset >= 0, bytes >= 0 else { throw BlockError(.invalidArgument, "bad range") }
    if offset >= total || bytes == 0 {
      return BlockStatus(flags: offset >= total ? .eof : [], count: 0)
    }
    let bytes = min(bytes, total - offset)
    return try await inFlight {
      var status: BlockStatus
      if !capabilities.hasBlockStatus {
        status = BlockStatus(flags: [.data, .allocated], count: bytes)
        if capabilities.kind == .protocolDriver {
          status.flags.insert(.offsetValid)
          status.mapOffset = offset
          status.file = self
        } else if capabilities.kind == .filter, let file {
          status = BlockStatus(
            flags: [.raw, .offsetValid], count: bytes, mapOffset: offset,
            file: file)
        }
      } else {
        let align = limits.requestAlignment
        let alignedOffset = alignDown(offset, align)
        let alignedBytes = alignUp(offset + bytes, align) - alignedOffset
        status = try await driver.blockStatus(
          self, wantZero: wantZero, offset: alignedOffset,
          length: alignedBytes)
        precondition(status.count > 0 && status.count <= alignedBytes, "bad block status count")
        let skipped = offset - alignedOffset
        if status.count <= skipped {
          // The driver answered for less than the aligned head; ask again for
          // one aligned block so the caller always makes progress.
          status.count = min(align - skipped, bytes)
        } else {
          status.count = min(status.count - skipped, bytes)
        }
        if status.flags.contains(.offsetValid) { status.mapOffset += skipped }
      }

      if status.flags.contains(.raw), let file = status.file {
        let inner = try await file.blockStatus(
          offset: status.mapOffset, bytes: status.count,
          wantZero: wantZero)
        var resolved = inner
        resolved.count = inner.count == 0 ? status.count : inner.count
        if inner.count == 0 {
          resolved.flags = [.zero, .allocated]
        }
        resolved.flags.remove(.eof)
        return finish(resolved, offset: offset, total: total)
      }

      if !status.flags.isDisjoint(with: [.data, .zero]) {
        status.flags.insert(.allocated)
      } else if capabilities.supportsBacking {
        if let backing {
          if wantZero && offset >= backing.length { status.flags.insert(.zero) }
        } else {
          status.flags.insert(.zero)
        }
      }

      if wantZero && status.flags.contains(.recurse), let file = status.file, file !== self,
        status.flags.contains(.data), !status.flags.contains(.zero),
        status.flags.contains(.offsetValid)
      {
        // The file's answer only refines this one: a failure to get it is
        // ignored, as QEMU does.
        if let inner = try? await file.blockStatus(
          offset: status.mapOffset, bytes: status.count,
          wantZero: true)
        {
          status = Self.refined(status, by: inner)
        }
      }
      status.flags.remove(.recurse)
      return finish(status, offset: offset, total: total)
    }
  }

  /// A RECURSE data answer refined by the file's status at its host offset
  /// (QEMU's `bdrv_co_block_status`).
  private static func refined(_ status: BlockStatus, by inner: BlockStatus) -> BlockStatus {
    var status = status
    if inner.flags.contains(.eof) && (inner.count == 0 || inner.flags.contains(.zero)) {
      // The file ends inside this data range: the rest reads as zeroes.
      status.flags.insert(.zero)
    } else {
      // Limit the answer to the range the file reported.
      status.count = inner.count
      status.flags.formUnion(inner.flags.intersection(.zero))
    }
    return status
  }

  private func finish(_ status: BlockStatus, offset: Int64, total: Int64) -> BlockStatus {
    var status = status
    status.flags.remove(.raw)
    if offset + status.count == total { status.flags.insert(.eof) }
    return status
  }

  /// Whether the range at `offset` is allocated in this node, and for how many
  /// bytes that answer holds; 0 bytes means `offset` is at or past the end
  /// (QEMU's `bdrv_is_allocated`).
  public func isAllocated(offset: Int64, bytes: Int64) async throws -> (Bool, Int64) {
    let status = try await blockStatus(offset: offset, bytes: bytes, wantZero: false)
    return (status.flags.contains(.allocated), status.count)
  }

  /// The status of a range through the backing chain from this node down to
  /// `base` (QEMU's `bdrv_common_block_status_above`), and the depth (1 = this
  /// node) of the node that answered.
  public func blockStatusAbove(
    base: BlockNode?, includeBase: Bool = false, offset: Int64, bytes: Int64, wantZero: Bool
  ) async throws -> (status: BlockStatus, depth: Int) {
    if !includeBase && self === base {
      return (BlockStatus(flags: [], count: bytes), 0)
    }
    var status = try await blockStatus(offset: offset, bytes: bytes, wantZero: wantZero)
    var depth = 1
    if status.count == 0 || status.flags.contains(.allocated) || self === base {
      return (status, depth)
    }
    let eof: Int64? = status.flags.contains(.eof) ? offset + status.count : nil
    var bytes = status.count
    var layer = backingOrFiltered
    while let node = layer, includeBase || node !== base {
      status = try await node.blockStatus(offset: offset, bytes: bytes, wantZero: wantZero)
      depth += 1
      if status.count == 0 {
        // This layer is shorter: zeroes past its end behave as allocated here.
        status = BlockStatus(flags: [.zero, .allocated], count: bytes, file: node)
        break
      }
      if status.flags.contains(.allocated) {
        status.flags.remove(.eof)
        break
      }
      if node === base { break }
      bytes = status.count
      layer = node.backingOrFiltered
    }
    if let eof, offset + status.count == eof { status.flags.insert(.eof) }
    return (status, depth)
  }

  /// Whether the range is allocated anywhere between this node and `base`,
  /// returned as the depth of the node holding it (0 = nowhere, 1 = this
  /// node), with the number of bytes that answer holds for (QEMU's
  /// `bdrv_is_allocated_above`).
  public func isAllocatedAbove(
    base: BlockNode?, includeBase: Bool = false, offset: Int64, bytes: Int64
  ) async throws -> (depth: Int, count: Int64) {
    let (status, depth) = try await blockStatusAbove(
      base: base, includeBase: includeBase,
      offset: offset, bytes: bytes, wantZero: false)
    return (status.flags.contains(.allocated) ? depth : 0, status.count)
  }

  /// The node below this one in a chain: the backing node, or for a filter its file.
  var backingOrFiltered: BlockNode? {
    if capabilities.kind == .filter { return file }
    return backing
  }
}
