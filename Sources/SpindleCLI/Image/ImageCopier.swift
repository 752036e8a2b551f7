import BlockCore

/// Copies one image into another the way `qemu-img convert` does: driven by
/// the source's block status through its whole backing chain, ranges that
/// read as zeroes are skipped (or zero-written when the target does not read
/// as zeroes already), data is read in chunks of at most 2 MiB into one
/// reused buffer, and within a chunk runs of `minSparse`-sized all-zero
/// blocks are treated as zeroes too. Compressed copies go cluster by cluster.
@BlockActor
final class ImageCopier {
  struct Settings {
    /// `-S`: the zero-detection granularity in bytes (0: off, write everything).
    var minSparse = 4096
    /// `-c`: compress every cluster.
    var compressed = false
    /// Whether the target reads as zeroes before the copy (QEMU's has_zero_init).
    var targetIsZero = false
    /// The target's cluster size (the unit of compressed writes).
    var clusterSize = 65536
  }

  /// A failed read or write, with QEMU's wording.
  struct Failure: Error {
    let message: String
  }

  /// QEMU's IO_BUF_SIZE.
  static let chunkSize = 2 << 20

  let source: BlockBackend
  let target: BlockBackend
  let settings: Settings
  let meter: ProgressMeter
  private let buffer: IOVector
  private let total: Int64

  init(source: BlockBackend, target: BlockBackend, settings: Settings, meter: ProgressMeter) {
    self.source = source
    self.target = target
    self.settings = settings
    self.meter = meter
    total = source.length
    let size = max(Self.chunkSize, settings.compressed ? settings.clusterSize : 0)
    buffer = IOVector(allocating: size)
  }

  func run() async throws {
    // QEMU counts the bytes it will copy first; progress is measured in them.
    var dataBytes: Int64 = 0
    if meter.enabled {
      var offset: Int64 = 0
      while offset < total {
        let run = try await nextRun(at: offset)
        if countsForProgress(run) { dataBytes += run.length }
        offset += run.length
      }
    }
    var offset: Int64 = 0
    var copied: Int64 = 0
    while offset < total {
      let run = try await nextRun(at: offset)
      if run.zero {
        try await writeZeroes(at: offset, count: run.length)
      } else if settings.compressed {
        try await copyCompressed(at: offset, length: run.length)
      } else {
        try await copyData(at: offset, length: run.length)
      }
      offset += run.length
      if countsForProgress(run) {
        copied += run.length
        meter.report(100 * Float(copied) / Float(dataBytes))
      }
    }
  }

  /// Whether QEMU counts a run in its progress: data, and zeroes with `-S 0`.
  private func countsForProgress(_ run: (zero: Bool, length: Int64)) -> Bool {
    !run.zero || settings.minSparse == 0
  }

  /// The next run to copy (QEMU's `convert_iteration_sectors`): zeroes as long
  /// as the source's block status says so, data in chunks of at most 2 MiB;
  /// compressed copies go by whole clusters, one at a time for data, a
  /// cluster with any data in it being data.
  private func nextRun(at offset: Int64) async throws -> (zero: Bool, length: Int64) {
    let left = total - offset
    let status: BlockStatus
    do {
      status = try await source.root.blockStatusAbove(
        base: nil, offset: offset, bytes: min(left, 1 << 30), wantZero: true
      ).status
    } catch {
      throw Failure(
        message:
          "error while reading block status of sector \(offset / 512): \(errorMessage(error))")
    }
    var length = max(status.count, 1)
    // QEMU keeps runs ending on the source's cluster (or request) alignment
    // when they can, so that the next run starts aligned.
    let alignment = max(source.root.clusterSize, 512)
    let tail = (offset + length) % alignment
    if length > tail { length -= tail }
    var zero = status.flags.contains(.zero)
    if !zero { length = min(length, Int64(Self.chunkSize)) }
    if settings.compressed {
      let cluster = Int64(settings.clusterSize)
      if !zero || length < cluster {
        length = min(cluster, left)
        zero = false
      } else {
        length = length / cluster * cluster
      }
    }
    return (zero, length)
  }

  /// Copies a data run; within it, runs of `minSparse`-sized blocks (aligned
  /// in the image) that are all zero are zero-written or skipped.
  private func copyData(at offset: Int64, length: Int64) async throws {
    let count = Int(length)
    let data = buffer.slice(0, count)
    try await read(at: offset, into: data)
    guard settings.minSparse > 0 else {
      try await write(at: offset, from: data)
      return
    }
    let granule = Int64(settings.minSparse)
    var position = 0
    while position < count {
      let absolute = offset + Int64(position)
      let blockEnd = Int(min(absolute / granule * granule + granule - offset, length))
      let zero = data.isZero(at: position, count: blockEnd - position)
      var end = blockEnd
      while end < count {
        let next = min(end + settings.minSparse, count)
        if data.isZero(at: end, count: next - end) != zero { break }
        end = next
      }
      if zero {
        try await writeZeroes(at: absolute, count: Int64(end - position))
      } else {
        try await write(at: absolute, from: data.slice(position, end - position))
      }
      position = end
    }
  }

  /// Copies whole clusters compressed; all-zero clusters are zeroes.
  private func copyCompressed(at offset: Int64, length: Int64) async throws {
    let cluster = Int64(settings.clusterSize)
    var done: Int64 = 0
    while done < length {
      let piece = min(cluster, length - done)
      let data = buffer.slice(0, Int(piece))
      try await read(at: offset + done, into: data)
      if data.isZero() {
        try await writeZeroes(at: offset + done, count: piece)
      } else {
        do {
          try await target.writeCompressed(at: offset + done, from: data)
        } catch {
          throw Failure(
            message:
              "error while compressing sector \((offset + done) / 512): \(errorMessage(error))")
        }
      }
      done += piece
    }
  }

  private func read(at offset: Int64, into data: IOVector) async throws {
    do {
      try await source.read(at: offset, into: data)
    } catch {
      throw Failure(message: "error while reading at byte \(offset): \(errorMessage(error))")
    }
  }

  private func write(at offset: Int64, from data: IOVector) async throws {
    do {
      try await target.write(at: offset, from: data)
    } catch {
      throw Failure(message: "error while writing at byte \(offset): \(errorMessage(error))")
    }
  }

  /// Zeroes in the target unless it reads as zeroes already.
  private func writeZeroes(at offset: Int64, count: Int64) async throws {
    if settings.targetIsZero { return }
    do {
      var done: Int64 = 0
      while done < count {
        let piece = min(count - done, 1 << 30)
        try await target.writeZeroes(
          at: offset + done, count: piece, flags: settings.minSparse > 0 ? [.mayUnmap] : [])
        done += piece
      }
    } catch {
      throw Failure(message: "error while writing at byte \(offset): \(errorMessage(error))")
    }
  }
}

/// QEMU's `qemu_progress_*` for `-p`: `    (NN.NN/100%)` and a carriage
/// return on standard output whenever the progress moved by more than
/// `minSkip` points (or is 0 or 100), computed in `float` as QEMU does; a
/// newline at the end.
@BlockActor
final class ProgressMeter {
  let enabled: Bool
  let console: Console
  let minSkip: Float
  private var current: Float = 0
  private var lastPrint: Float = 0

  init(enabled: Bool, console: Console, minSkip: Float = 1) {
    self.enabled = enabled
    self.console = console
    self.minSkip = minSkip
  }

  /// QEMU's `qemu_progress_print(value, 0)`: the progress is `value`.
  func report(_ value: Float) {
    current = min(value, 100)
    printIfMoved()
  }

  /// QEMU's `qemu_progress_print(delta, 100)`: the progress grows by `delta`.
  func advance(by delta: Float) {
    current = min(current + delta, 100)
    printIfMoved()
  }

  private func printIfMoved() {
    guard enabled else { return }
    if current > lastPrint + minSkip || current < lastPrint - minSkip || current == 0
      || current == 100
    {
      lastPrint = current
      console.write(cFormat("    (%3.2f/100%%)\r", Double(current)))
      console.flush()
    }
  }

  /// QEMU's `qemu_progress_end`: a newline.
  func end() {
    guard enabled else { return }
    console.write("\n")
  }
}
