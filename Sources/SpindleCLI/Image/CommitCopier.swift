import BlockCore
import BlockDrivers

/// The copy of `qemu-img commit`, as QEMU 7.2's active commit job (a mirror,
/// block/mirror.c) makes it: every chunk of the job's granularity that holds
/// a range allocated above the base is dirty; each dirty run is copied in
/// pieces by the status of the whole chain. A piece that is data, or shorter
/// than a chunk, is read and written as data; a zero piece whose chunks are
/// whole clusters of the base becomes a zero-write that may unmap (the base's
/// clusters become zero clusters without host clusters), and a piece that is
/// neither a discard.
@BlockActor
struct CommitCopier {
  /// The image being committed.
  let top: BlockNode
  /// The base node: ranges allocated in it or below are not dirty.
  let base: BlockNode
  /// The base, written through its backend.
  let target: BlockBackend
  /// Paces the data copied (`-r`), zero-writes and discards are free.
  let throttle: ThrottledClock?

  /// The largest piece copied at once (QEMU's buffer of 16 MiB over its 16
  /// requests in flight).
  static let maxPiece: Int64 = 1 << 20

  /// The dirty bitmap's granularity (QEMU's
  /// `bdrv_get_default_bitmap_granularity` of the target): its cluster size
  /// within 4 KiB ... 64 KiB, else 64 KiB.
  var granularity: Int64 {
    guard let cluster = target.root.driver.clusterSize(target.root) else { return 65536 }
    return min(65536, max(4096, cluster))
  }

  /// Copies every dirty run.
  func run() async throws {
    let buffer = IOVector(allocating: Int(Self.maxPiece))
    for range in try await dirtyRanges() {
      var offset = range.lowerBound
      while offset < range.upperBound {
        offset += try await copyPiece(at: offset, before: range.upperBound, buffer: buffer)
      }
    }
  }

  /// The runs of dirty chunks (QEMU's `mirror_dirty_init`), in order.
  private func dirtyRanges() async throws -> [Range<Int64>] {
    let length = top.length
    let chunk = granularity
    var ranges: [Range<Int64>] = []
    var offset: Int64 = 0
    while offset < length {
      let (depth, count) = try await top.isAllocatedAbove(
        base: base, offset: offset, bytes: length - offset)
      let run = max(count, 1)
      if depth > 0 {
        let start = offset / chunk * chunk
        let end = min(length, (offset + run + chunk - 1) / chunk * chunk)
        if let last = ranges.last, last.upperBound >= start {
          ranges[ranges.count - 1] = last.lowerBound..<max(last.upperBound, end)
        } else {
          ranges.append(start..<end)
        }
      }
      offset += run
    }
    return ranges
  }

  /// Copies the piece at `offset` of a dirty run ending at `end` (QEMU's
  /// `mirror_iteration` for one piece) and returns its length.
  private func copyPiece(at offset: Int64, before end: Int64, buffer: IOVector) async throws
    -> Int64
  {
    let chunk = granularity
    let status = try? await top.blockStatusAbove(
      base: nil, offset: offset, bytes: end - offset, wantZero: true
    ).status
    var bytes = status?.count ?? min(end - offset, Self.maxPiece)
    if status?.flags.contains(.data) == true { bytes = min(bytes, Self.maxPiece) }
    bytes -= bytes % chunk
    var zero: Bool?
    if bytes < chunk {
      bytes = chunk
    } else if let status, !status.flags.contains(.data), coversWholeClusters(offset, bytes) {
      zero = status.flags.contains(.zero)
    }
    bytes = min(bytes, top.length - offset)
    switch zero {
    case true?:
      try await target.writeZeroes(at: offset, count: bytes, flags: [.mayUnmap])
    case false?:
      try await target.discard(at: offset, count: bytes)
    case nil:
      var done: Int64 = 0
      while done < bytes {
        let piece = min(bytes - done, Self.maxPiece)
        let data = buffer.slice(0, Int(piece))
        try await top.read(at: offset + done, into: data)
        try await target.write(at: offset + done, from: data)
        try await throttle?.dispatch(piece)
        done += piece
      }
    }
    return bytes
  }

  /// Whether the range is whole clusters of the base (QEMU's
  /// `bdrv_round_to_clusters` leaves it as it is).
  private func coversWholeClusters(_ offset: Int64, _ bytes: Int64) -> Bool {
    guard let cluster = target.root.driver.clusterSize(target.root), cluster > 0 else {
      return true
    }
    return offset % cluster == 0 && bytes % cluster == 0
  }
}
