import BlockCore
import NIOCore

/// Carries out one validated request on the engine and builds its whole reply,
/// as qemu-nbd 7.2's `nbd_handle_request` does: simple replies on success,
/// ERROR chunks with a message on failure once structured replies are on.
/// With extended headers (as QEMU 8.2+), every reply is extended chunks: a
/// NONE chunk on success, BLOCK_STATUS_EXT with 64-bit extents.
@BlockActor
struct NBDRequestHandler {
  let backend: BlockBackend
  let size: UInt64
  let mode: NBDHeaderMode
  let baseAllocation: Bool
  let allocationDepth: Bool
  /// The `qemu:dirty-bitmap:` contexts selected, with their ids.
  let bitmaps: [(id: UInt32, bitmap: DirtyBitmap)]

  /// QEMU's cap on the extents of one BLOCK_STATUS chunk.
  static let maxExtents = 131072

  private nonisolated var structuredReplies: Bool { mode >= .structured }

  /// The offset extended chunks echo for `request` (nil: not extended).
  private nonisolated func echo(_ request: NBDRequest) -> UInt64? {
    mode == .extended ? request.offset : nil
  }

  /// The reply to a failed request.
  nonisolated func errorReply(_ request: NBDRequest, error: NBDError, message: String)
    -> ByteBuffer
  {
    var out = ByteBuffer()
    if structuredReplies {
      NBDEncoding.errorChunk(
        &out, cookie: request.cookie, error: error.rawValue, message: message,
        requestOffset: echo(request))
    } else {
      NBDEncoding.simpleReply(&out, error: error.rawValue, cookie: request.cookie)
    }
    return out
  }

  /// Success without data: a simple reply, or with extended headers (which
  /// have no simple replies) a NONE chunk.
  private func success(_ request: NBDRequest) -> ByteBuffer {
    var out = ByteBuffer()
    if let offset = echo(request) {
      NBDEncoding.chunkHeader(
        &out, done: true, type: .none, cookie: request.cookie, length: 0, requestOffset: offset)
    } else {
      NBDEncoding.simpleReply(&out, error: 0, cookie: request.cookie)
    }
    return out
  }

  /// Runs `body`; an engine error becomes an error reply with `message`.
  private func attempt(
    _ request: NBDRequest, _ message: String, _ body: () async throws -> ByteBuffer
  ) async -> ByteBuffer {
    do {
      return try await body()
    } catch {
      return errorReply(request, error: .of(error), message: message)
    }
  }

  /// The reply to `request` (already validated; `payload` is a WRITE's
  /// data). `contexts`: for a BLOCK_STATUS whose payload picked contexts,
  /// their ids (empty: the payload was invalid); nil: every negotiated one.
  func handle(_ request: NBDRequest, payload: ByteBuffer?, contexts: Set<UInt32>? = nil) async
    -> ByteBuffer
  {
    let offset = Int64(request.offset)
    let length = Int64(request.length)
    let flags = request.flags
    switch NBDCommand(rawValue: request.type)! {
    case .read:
      return await attempt(request, "reading from file failed") {
        if flags.contains(.fua) { try await backend.flush() }
        return try await read(request)
      }
    case .write:
      return await attempt(request, "writing to file failed") {
        let bytes = payload ?? ByteBuffer()
        let iov = IOVector(allocating: bytes.readableBytes)
        bytes.withUnsafeReadableBytes { iov.copyIn($0) }
        try await backend.write(at: offset, from: iov, flags: flags.contains(.fua) ? .fua : [])
        return success(request)
      }
    case .writeZeroes:
      return await attempt(request, "writing to file failed") {
        var engineFlags: RequestFlags = []
        if flags.contains(.fua) { engineFlags.insert(.fua) }
        if !flags.contains(.noHole) { engineFlags.insert(.mayUnmap) }
        if flags.contains(.fastZero) { engineFlags.insert(.noFallback) }
        try await backend.writeZeroes(at: offset, count: length, flags: engineFlags)
        return success(request)
      }
    case .flush:
      return await attempt(request, "flush failed") {
        try await backend.flush()
        return success(request)
      }
    case .trim:
      return await attempt(request, "discard failed") {
        try await backend.discard(at: offset, count: length)
        if flags.contains(.fua) { try await backend.flush() }
        return success(request)
      }
    case .cache:
      return await attempt(request, "flush cache failed") {
        if length > 0 {
          let iov = IOVector(allocating: Int(length))
          try await backend.read(at: offset, into: iov, flags: .copyOnRead)
        }
        return success(request)
      }
    case .blockStatus:
      let negotiated = !negotiatedContexts.isEmpty
      if contexts?.isEmpty == true {
        return errorReply(
          request, error: .invalid,
          message: negotiated
            ? "CMD_BLOCK_STATUS payload not valid" : "CMD_BLOCK_STATUS not negotiated")
      }
      if length == 0 {
        return errorReply(request, error: .invalid, message: "need non-zero length")
      }
      guard negotiated else {
        return errorReply(request, error: .invalid, message: "CMD_BLOCK_STATUS not negotiated")
      }
      return await attempt(request, "can't get block status") {
        try await blockStatus(request, contexts: contexts ?? negotiatedContexts)
      }
    case .disconnect:
      return ByteBuffer()
    }
  }

  /// READ: one OFFSET_DATA chunk (DF, or no structured replies: a simple
  /// reply), or with structured replies OFFSET_HOLE for zero extents.
  private func read(_ request: NBDRequest) async throws -> ByteBuffer {
    let cookie = request.cookie
    let echo = echo(request)
    var out = ByteBuffer()
    if structuredReplies && request.length == 0 {
      NBDEncoding.chunkHeader(
        &out, done: true, type: .none, cookie: cookie, length: 0, requestOffset: echo)
      return out
    }
    if !structuredReplies || request.flags.contains(.dontFragment) {
      let data = try await readData(Int64(request.offset), Int(request.length))
      if structuredReplies {
        appendData(&out, request, offset: request.offset, data: data, done: true)
      } else {
        NBDEncoding.simpleReply(&out, error: 0, cookie: cookie)
        out.writeBytes(data)
      }
      return out
    }
    var position = Int64(request.offset)
    let end = position + Int64(request.length)
    while position < end {
      let status = try await backend.blockStatus(offset: position, bytes: end - position).status
      let count = status.count > 0 ? min(status.count, end - position) : end - position
      let done = position + count == end
      if status.flags.contains(.zero) {
        NBDEncoding.hole(
          &out, done: done, cookie: cookie, offset: UInt64(position), length: UInt32(count),
          requestOffset: echo)
      } else {
        let data = try await readData(position, Int(count))
        appendData(&out, request, offset: UInt64(position), data: data, done: done)
      }
      position += count
    }
    return out
  }

  private func readData(_ offset: Int64, _ count: Int) async throws -> [UInt8] {
    let iov = IOVector(allocating: count)
    try await backend.read(at: offset, into: iov)
    return [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
      iov.copyOut(to: UnsafeMutableRawBufferPointer(buffer))
      initialized = count
    }
  }

  private func appendData(
    _ out: inout ByteBuffer, _ request: NBDRequest, offset: UInt64, data: [UInt8], done: Bool
  ) {
    NBDEncoding.chunkHeader(
      &out, done: done, type: .offsetData, cookie: request.cookie, length: 8 + data.count,
      requestOffset: echo(request))
    out.writeInteger(offset)
    out.writeBytes(data)
  }

  /// The ids of the contexts SET_META_CONTEXT selected.
  var negotiatedContexts: Set<UInt32> {
    var ids = Set(bitmaps.map(\.id))
    if baseAllocation { ids.insert(NBDProtocol.baseAllocationID) }
    if allocationDepth { ids.insert(NBDProtocol.allocationDepthID) }
    return ids
  }

  /// One extent: its length and the context's flags.
  typealias Extent = (length: UInt64, flags: UInt32)

  /// BLOCK_STATUS: one chunk per wanted context, `base:allocation` first,
  /// then `qemu:allocation-depth`, then the dirty bitmaps in id order, the
  /// last one marked done (as qemu-nbd). With extended headers the chunks
  /// are BLOCK_STATUS_EXT, whose 64-bit extents may pass 4 GiB.
  private func blockStatus(_ request: NBDRequest, contexts: Set<UInt32>) async throws
    -> ByteBuffer
  {
    let extended = mode == .extended
    var chunks: [(id: UInt32, extents: [Extent])] = []
    if baseAllocation && contexts.contains(NBDProtocol.baseAllocationID) {
      let extents = try await extents(of: request) { position, bytes in
        let status = try await backend.blockStatus(offset: position, bytes: bytes).status
        var flags: NBDAllocationFlags = []
        if !status.flags.contains(.data) { flags.insert(.hole) }
        if status.flags.contains(.zero) { flags.insert(.zero) }
        return (status.count, flags.rawValue)
      }
      chunks.append((NBDProtocol.baseAllocationID, extents))
    }
    if allocationDepth && contexts.contains(NBDProtocol.allocationDepthID) {
      let extents = try await extents(of: request) { position, bytes in
        // QEMU's blockalloc_to_extents: bdrv_is_allocated_above's depth.
        let (depth, count) = try await backend.root.isAllocatedAbove(
          base: nil, offset: position, bytes: bytes)
        return (count, UInt32(depth))
      }
      chunks.append((NBDProtocol.allocationDepthID, extents))
    }
    for (id, bitmap) in bitmaps where contexts.contains(id) {
      chunks.append((id, Self.extents(of: request, in: bitmap, extended: extended)))
    }
    var out = ByteBuffer()
    for (index, chunk) in chunks.enumerated() {
      let done = index == chunks.count - 1
      if extended {
        NBDEncoding.blockStatusExtended(
          &out, done: done, cookie: request.cookie, requestOffset: request.offset,
          contextID: chunk.id, extents: chunk.extents.map { ($0.length, UInt64($0.flags)) })
      } else {
        // A compact request's range is under 4 GiB, and so is every extent.
        NBDEncoding.blockStatus(
          &out, done: done, cookie: request.cookie, contextID: chunk.id,
          extents: chunk.extents.map { (UInt32($0.length), $0.flags) })
      }
    }
    return out
  }

  /// The request's range as clean (0) and dirty (1) extents of `bitmap`
  /// (QEMU's `bitmap_to_extents`): dirty chunks clipped to the range,
  /// neighbours merged, at most ``maxExtents`` (one with REQ_ONE); without
  /// extended headers no extent reaches 4 GiB.
  private static func extents(of request: NBDRequest, in bitmap: DirtyBitmap, extended: Bool)
    -> [Extent]
  {
    let limit = request.flags.contains(.reqOne) ? 1 : maxExtents
    let start = Int64(request.offset)
    let end = start + Int64(request.length)
    var extents: [Extent] = []
    func add(_ length: Int64, _ flags: UInt32) -> Bool {
      guard length > 0 else { return true }
      if let last = extents.last, last.flags == flags,
        extended || last.length + UInt64(length) <= UInt64(UInt32.max)
      {
        extents[extents.count - 1].length = last.length + UInt64(length)
        return true
      }
      guard extents.count < limit else { return false }
      extents.append((UInt64(length), flags))
      return true
    }
    var position = start
    for dirty in bitmap.dirtyRanges(in: start..<end) {
      guard add(dirty.lowerBound - position, 0), add(dirty.upperBound - dirty.lowerBound, 1) else {
        return extents
      }
      position = dirty.upperBound
    }
    _ = add(end - position, 0)
    return extents
  }

  /// The extents of the request's range as `status` reports them (bytes it
  /// holds for, flags): neighbouring extents with equal flags merged, at most
  /// ``maxExtents`` (one with REQ_ONE).
  private func extents(
    of request: NBDRequest,
    _ status: (_ offset: Int64, _ bytes: Int64) async throws -> (count: Int64, flags: UInt32)
  ) async throws -> [Extent] {
    let limit = request.flags.contains(.reqOne) ? 1 : Self.maxExtents
    var extents: [Extent] = []
    var position = Int64(request.offset)
    let end = position + Int64(request.length)
    while position < end {
      let answer = try await status(position, end - position)
      let count = answer.count > 0 ? min(answer.count, end - position) : end - position
      if let last = extents.last, last.flags == answer.flags {
        extents[extents.count - 1].length = last.length + UInt64(count)
      } else {
        if extents.count == limit { break }
        extents.append((UInt64(count), answer.flags))
      }
      position += count
    }
    return extents
  }
}
