import BlockCore

/// Copies images, one after the other, into another the way `qemu-img
/// convert` does: driven by each source's block status through its whole
/// backing chain, ranges that
/// read as zeroes are skipped (or zero-written when the target does not read
/// as zeroes already), data is read in chunks of at most 2 MiB, and within a
/// chunk runs of `minSparse`-sized all-zero blocks are treated as zeroes too
/// (with `minSparse` 0, `-S 0`, zeroes are written as data). Compressed
/// copies go cluster by cluster. Progress is reported as each run is taken,
/// as QEMU's coroutines report it.
///
/// Up to `inFlight` runs are copied at once (QEMU's `-m` coroutines), each
/// with a 2 MiB buffer reused from a pool; reads overlap freely, writes are
/// issued in image order unless `outOfOrder` (`-W`), so that the target's
/// layout does not depend on timing.
///
/// With `salvage` (`--salvage`), a failed read is retried sector by sector
/// and a failed block-status query on a quarter of its range at a time;
/// sectors that still fail become warnings and zeroes;
/// with a `rateLimit` (`-r`), the data read is paced by a ``RateLimiter``.
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
    /// `-m`: how many runs are copied at once.
    var inFlight = 8
    /// `-W`: writes may complete in any order.
    var outOfOrder = false
    /// `-B`: the target has a backing file (assumed to hold what the
    /// source's backing chain holds), so only what the source's top image
    /// allocates is copied.
    var targetHasBacking = false
    /// `--salvage`: a failed read is retried sector by sector, and the
    /// sectors that still fail read as zeroes (with a warning).
    var salvage = false
    /// `-r`: the most bytes per second read from the sources (0: no limit).
    var rateLimit: UInt64 = 0
    /// The length of the target's backing file when the target is new and
    /// has one (QEMU's `target_backing_sectors`; nil: unknown): past it the
    /// target reads as zeroes, so zero runs there are left alone.
    var targetBackingLength: Int64?
  }

  /// A run of the source and how it is written.
  struct Run {
    enum Kind {
      /// Read from the source and written (all-zero blocks may become zeroes).
      case data
      /// Zero-written, or skipped when the target reads as zeroes.
      case zero
      /// Reads as zeroes but is written as data (`-S 0`: fully allocated).
      case zeroData
      /// Left to the target's backing file.
      case backing
    }

    var kind: Kind
    var length: Int64

    /// Whether the run needs a buffer: it is written as data.
    var writesData: Bool { kind == .data || kind == .zeroData }
  }

  /// A failed read or write, with QEMU's wording.
  struct Failure: Error {
    let message: String
  }

  /// QEMU's IO_BUF_SIZE.
  static let chunkSize = 2 << 20

  /// The sources, concatenated, and where each starts in the target.
  let sources: [BlockBackend]
  private let starts: [Int64]
  let target: BlockBackend
  let settings: Settings
  let meter: ProgressMeter
  private let bufferSize: Int
  private let total: Int64
  private let sequencer = WriteSequencer()
  private var copied: Int64 = 0
  private var dataBytes: Int64 = 0
  private let throttle: ThrottledClock?
  /// Prints salvage warnings (QEMU's `warn_report`, silent with `-q`).
  private let warn: @BlockActor (String) -> Void

  init(
    sources: [BlockBackend], target: BlockBackend, settings: Settings, meter: ProgressMeter,
    warn: @escaping @BlockActor (String) -> Void = { _ in }
  ) {
    self.warn = warn
    throttle = settings.rateLimit > 0 ? ThrottledClock(bytesPerSecond: settings.rateLimit) : nil
    self.sources = sources
    var starts: [Int64] = []
    var end: Int64 = 0
    for source in sources {
      starts.append(end)
      end += source.length
    }
    self.starts = starts
    self.target = target
    self.settings = settings
    self.meter = meter
    total = end
    bufferSize = max(Self.chunkSize, settings.compressed ? settings.clusterSize : 0)
  }

  func run() async throws {
    // QEMU counts the bytes it will copy first; progress is measured in them.
    // (Salvage warnings about block status are printed in this pass too.)
    if meter.enabled || settings.salvage {
      var offset: Int64 = 0
      while offset < total {
        let run = try await nextRun(at: offset)
        if countsForProgress(run) { dataBytes += run.length }
        offset += run.length
      }
    }
    let slots = max(1, settings.inFlight)
    var buffers: [IOVector] = []
    try await withThrowingTaskGroup(of: IOVector?.self) { group in
      do {
        var offset: Int64 = 0
        var index = 0
        var running = 0
        while offset < total {
          // As QEMU's coroutines: a free one asks for the next run.
          if running == slots {
            if let returned = try await group.next(), let buffer = returned {
              buffers.append(buffer)
            }
            running -= 1
          }
          let run = try await nextRun(at: offset)
          // QEMU reports progress when a coroutine takes a run, before its
          // I/O: the progress lines and the messages of the runs' block
          // status queries come in a fixed order.
          if countsForProgress(run) {
            copied += run.length
            meter.report(100 * Float(copied) / Float(dataBytes))
          }
          let buffer =
            run.writesData ? (buffers.popLast() ?? IOVector(allocating: bufferSize)) : nil
          // QEMU's -r: a data run waits while the 100 ms slice's quota
          // is used up, then is accounted.
          if run.kind == .data, let throttle {
            try await throttle.waitForSlice()
            await throttle.processed(run.length)
          }
          let (start, turn) = (offset, index)
          group.addTask {
            try await self.copy(run, at: start, turn: turn, buffer: buffer)
            return buffer
          }
          running += 1
          index += 1
          offset += run.length
        }
        try await group.waitForAll()
      } catch {
        sequencer.abort()
        throw error
      }
    }
  }

  /// Copies one run: reads it (data runs), waits for its turn to write
  /// (unless out of order) and writes.
  private func copy(
    _ run: Run, at offset: Int64, turn: Int, buffer: IOVector?
  ) async throws {
    do {
      if let buffer {
        let data = buffer.slice(0, Int(run.length))
        if run.kind == .zeroData {
          data.fill(0)
        } else {
          try await read(at: offset, into: data)
        }
      }
      if !settings.outOfOrder { try await sequencer.waitForTurn(turn) }
      if let buffer {
        let data = buffer.slice(0, Int(run.length))
        if settings.compressed {
          try await writeCompressed(at: offset, data: data)
        } else {
          try await writeData(at: offset, data: data)
        }
      } else if run.kind == .zero {
        try await writeZeroes(at: offset, count: run.length)
      }
      if !settings.outOfOrder { sequencer.done(turn) }
    } catch {
      sequencer.abort()
      throw error
    }
  }

  /// Whether QEMU counts a run in its progress: data, and zeroes with `-S 0`.
  private func countsForProgress(_ run: Run) -> Bool { run.writesData }

  /// The next run to copy (QEMU's `convert_iteration_sectors`): zeroes as long
  /// as the source's block status says so, data in chunks of at most 2 MiB;
  /// compressed copies go by whole clusters, one at a time for data, a
  /// cluster with any data in it being data. With a target backing file only
  /// the source's top image is asked; what it leaves to its backing file is
  /// left to the target's, and so are zeroes past the end of the target's
  /// backing file (the target reads zeroes there). With `-S 0` zeroes are
  /// written as data, in chunks.
  private func nextRun(at offset: Int64) async throws -> Run {
    let left = total - offset
    let (source, local) = locate(offset)
    var bytes = min(source.length - local, 1 << 30)
    // QEMU splits the runs at the end of the target's backing file (in
    // sectors), where zeroes start being handled differently.
    var pastBackingEnd = false
    if let backingLength = settings.targetBackingLength {
      let end = (backingLength + 511) / 512 * 512
      if offset >= end {
        pastBackingEnd = true
      } else {
        bytes = min(bytes, end - offset)
      }
    }
    let status = try await blockStatus(of: source, at: local, bytes: bytes)
    var length = max(status.count, 1)
    // QEMU keeps runs ending on the source's cluster (or request) alignment
    // when they can, so that the next run starts aligned.
    // QEMU counts in sectors: a source's partial last sector is a whole one.
    let alignment = max(source.root.clusterSize, 512)
    let end = (local + length + 511) / 512 * 512
    let tail = end % alignment
    if end - local > tail { length = min(length, end - tail - local) }
    var kind: Run.Kind
    if status.flags.contains(.zero) {
      kind = pastBackingEnd ? .backing : .zero
    } else if status.flags.contains(.data) || !settings.targetHasBacking {
      kind = .data
    } else {
      kind = .backing
    }
    // -S 0: zeroes are written as data (QEMU reads nothing for them).
    if kind == .zero && settings.minSparse == 0 { kind = .zeroData }
    if kind != .zero && kind != .backing { length = min(length, Int64(Self.chunkSize)) }
    if settings.compressed {
      let cluster = Int64(settings.clusterSize)
      if kind == .data || length < cluster {
        length = min(cluster, left)
        kind = .data
      } else if kind == .zeroData {
        length = cluster
      } else {
        length = length / cluster * cluster
      }
    }
    return Run(kind: kind, length: length)
  }

  /// The source's block status at `offset` for up to `bytes` (through its
  /// backing chain unless the target has a backing file). With `--salvage`
  /// a failing query is retried on a quarter of its length, down to one
  /// sector; a sector whose status still fails is reported and taken as
  /// data (QEMU then tries to read it), so that only the failing sectors
  /// are reported.
  private func blockStatus(of source: BlockBackend, at offset: Int64, bytes: Int64) async throws
    -> BlockStatus
  {
    var sectors = (bytes + 511) / 512
    while true {
      let count = min(sectors * 512, bytes)
      do {
        return
          settings.targetHasBacking
          ? try await source.root.blockStatus(offset: offset, bytes: count, wantZero: true)
          : try await source.root.blockStatusAbove(
            base: nil, offset: offset, bytes: count, wantZero: true
          ).status
      } catch {
        let message =
          "error while reading block status at offset \(offset): \(errorMessage(error))"
        guard settings.salvage else { throw Failure(message: message) }
        if sectors > 1 {
          sectors = (sectors + 3) / 4
          continue
        }
        warn(message)
        return BlockStatus(flags: .data, count: count)
      }
    }
  }

  /// Writes a data run; within it, runs of `minSparse`-sized blocks (aligned
  /// in the image) that are all zero are zero-written or skipped.
  private func writeData(at offset: Int64, data: IOVector) async throws {
    let count = data.count
    guard settings.minSparse > 0 else {
      try await write(at: offset, from: data)
      return
    }
    let granule = Int64(settings.minSparse)
    var position = 0
    while position < count {
      let absolute = offset + Int64(position)
      let blockEnd = Int(min(absolute / granule * granule + granule - offset, Int64(count)))
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

  /// Writes one cluster compressed; an all-zero cluster is zeroes (unless
  /// `-S 0` asks for everything to be written).
  private func writeCompressed(at offset: Int64, data: IOVector) async throws {
    if settings.minSparse > 0 && data.isZero() {
      try await writeZeroes(at: offset, count: Int64(data.count))
      return
    }
    do {
      try await target.writeCompressed(at: offset, from: data)
    } catch {
      throw Failure(
        message: "error while compressing sector \(offset / 512): \(errorMessage(error))")
    }
  }

  /// The source holding the target's `offset`, and the offset in it.
  private func locate(_ offset: Int64) -> (BlockBackend, Int64) {
    let index = starts.lastIndex { $0 <= offset } ?? 0
    return (sources[index], offset - starts[index])
  }

  private func read(at offset: Int64, into data: IOVector) async throws {
    do {
      // A compressed cluster may span two sources.
      var done = 0
      while done < data.count {
        let (source, local) = locate(offset + Int64(done))
        let piece = Int(min(Int64(data.count - done), source.length - local))
        let slice = data.slice(done, piece)
        do {
          try await source.read(at: local, into: slice)
        } catch  where settings.salvage {
          await salvage(source, at: local, into: slice)
        }
        done += piece
      }
    } catch {
      throw Failure(message: "error while reading at byte \(offset): \(errorMessage(error))")
    }
  }

  /// `--salvage` after a failed read (QEMU's `convert_co_read`): the range
  /// is read again one sector at a time; a sector that still fails is
  /// reported with its offset in the source and reads as zeroes.
  private func salvage(_ source: BlockBackend, at offset: Int64, into data: IOVector) async {
    let sector = 512
    var position = 0
    while position < data.count {
      let count = min(sector, data.count - position)
      let piece = data.slice(position, count)
      do {
        try await source.read(at: offset + Int64(position), into: piece)
      } catch {
        warn("error while reading offset \(offset + Int64(position)): \(errorMessage(error))")
        piece.fill(0)
      }
      position += count
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

/// Lets runs write in the order they were started: run `n` waits until run
/// `n - 1` is done. A failure wakes every waiter with an error.
@BlockActor
final class WriteSequencer {
  private var next = 0
  private var waiters: [Int: CheckedContinuation<Void, any Error>] = [:]
  private var failed = false

  /// Returns when it is run `turn`'s turn to write.
  func waitForTurn(_ turn: Int) async throws {
    if failed { throw CancellationError() }
    if turn == next { return }
    try await withCheckedThrowingContinuation { waiters[turn] = $0 }
  }

  /// Run `turn` has written; the next one may.
  func done(_ turn: Int) {
    next = turn + 1
    waiters.removeValue(forKey: next)?.resume()
  }

  /// Ends the sequence after a failure.
  func abort() {
    failed = true
    let pending = waiters.values
    waiters = [:]
    for waiter in pending { waiter.resume(throwing: CancellationError()) }
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
