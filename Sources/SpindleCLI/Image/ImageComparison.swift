import BlockCore

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// The walk of QEMU's `img_compare` over two opened images.
@BlockActor
final class ImageComparison {
  enum Verdict {
    case identical
    /// The message (`Content mismatch at offset N!`, strict-mode messages).
    case different(String)
    /// An error message and the exit status (3: block status, 4: read).
    case failed(String, Int32)
  }

  private struct Stop: Error {
    let verdict: Verdict
  }

  let images: (BlockBackend, BlockBackend)
  let filenames: (String, String)
  let strict: Bool
  let quiet: Bool
  let meter: ProgressMeter
  private let buffers: (IOVector, IOVector)

  init(
    images: (BlockBackend, BlockBackend), filenames: (String, String), strict: Bool, quiet: Bool,
    meter: ProgressMeter
  ) {
    self.images = images
    self.filenames = filenames
    self.strict = strict
    self.quiet = quiet
    self.meter = meter
    let size = Int(CompareTool.chunkSize)
    buffers = (IOVector(allocating: size), IOVector(allocating: size))
  }

  func run() async -> Verdict {
    do {
      try await compare()
      return .identical
    } catch let stop as Stop {
      return stop.verdict
    } catch {
      return .failed(errorMessage(error), 1)
    }
  }

  private func compare() async throws {
    let sizes = (images.0.length, images.1.length)
    let total = min(sizes.0, sizes.1)
    let progressBase = Float(max(sizes.0, sizes.1))
    meter.advance(by: 0)
    if strict && sizes.0 != sizes.1 {
      throw Stop(verdict: .different("Strict mode: Image size mismatch!"))
    }
    var offset: Int64 = 0
    while offset < total {
      let status1 = try await status(images.0, filenames.0, at: offset, bytes: sizes.0 - offset)
      let status2 = try await status(images.1, filenames.1, at: offset, bytes: sizes.1 - offset)
      let allocated1 = status1.flags.contains(.allocated)
      let allocated2 = status2.flags.contains(.allocated)
      var chunk = min(status1.count, status2.count)
      if strict && status1.flags != status2.flags {
        throw Stop(verdict: .different("Strict mode: Offset \(offset) block status mismatch!"))
      }
      if status1.flags.contains(.zero) && status2.flags.contains(.zero) {
        // Both read as zeroes.
      } else if allocated1 == allocated2 {
        if allocated1 {
          chunk = min(chunk, CompareTool.chunkSize)
          let data1 = buffers.0.slice(0, Int(chunk))
          let data2 = buffers.1.slice(0, Int(chunk))
          try await read(images.0, filenames.0, at: offset, into: data1)
          try await read(images.1, filenames.1, at: offset, into: data2)
          if let mismatch = firstDifference(data1, data2) {
            throw Stop(verdict: .different("Content mismatch at offset \(offset + mismatch)!"))
          }
        }
      } else {
        chunk = min(chunk, CompareTool.chunkSize)
        if allocated1 {
          try await checkEmpty(images.0, filenames.0, at: offset, bytes: chunk)
        } else {
          try await checkEmpty(images.1, filenames.1, at: offset, bytes: chunk)
        }
      }
      offset += chunk
      meter.advance(by: Float(chunk) / progressBase * 100)
    }
    if sizes.0 != sizes.1 {
      if !quiet { meter.console.write("Warning: Image size mismatch!\n") }
      let (over, name) = sizes.0 > sizes.1 ? (images.0, filenames.0) : (images.1, filenames.1)
      let end = max(sizes.0, sizes.1)
      while offset < end {
        let status = try await status(over, name, at: offset, bytes: end - offset)
        var chunk = status.count
        if status.flags.contains(.allocated) && !status.flags.contains(.zero) {
          chunk = min(chunk, CompareTool.chunkSize)
          try await checkEmpty(over, name, at: offset, bytes: chunk)
        }
        offset += chunk
        meter.advance(by: Float(chunk) / progressBase * 100)
      }
    }
  }

  /// Block status through the chain (QEMU's `bdrv_block_status_above` to the bottom).
  private func status(_ image: BlockBackend, _ name: String, at offset: Int64, bytes: Int64)
    async throws -> BlockStatus
  {
    do {
      var status = try await image.root.blockStatusAbove(
        base: nil, offset: offset, bytes: bytes, wantZero: true
      ).status
      status.count = max(status.count, 1)
      return status
    } catch {
      throw Stop(verdict: .failed("Sector allocation test failed for \(name)", 3))
    }
  }

  private func read(_ image: BlockBackend, _ name: String, at offset: Int64, into data: IOVector)
    async throws
  {
    do {
      try await image.read(at: offset, into: data)
    } catch {
      throw Stop(
        verdict: .failed(
          "Error while reading offset \(offset) of \(name): \(errorMessage(error))", 4))
    }
  }

  /// QEMU's `check_empty_sectors`: the range must read as zeroes.
  private func checkEmpty(_ image: BlockBackend, _ name: String, at offset: Int64, bytes: Int64)
    async throws
  {
    let data = buffers.0.slice(0, Int(bytes))
    try await read(image, name, at: offset, into: data)
    var position = 0
    while position < data.count {
      let length = min(512, data.count - position)
      if !data.isZero(at: position, count: length) {
        throw Stop(verdict: .different("Content mismatch at offset \(offset + Int64(position))!"))
      }
      position += length
    }
  }

  /// QEMU's `compare_buffers` with sector granularity: nil when equal, else
  /// the start of the first differing 512-byte sector.
  private func firstDifference(_ first: IOVector, _ second: IOVector) -> Int64? {
    first.firstMismatch(with: second).map { Int64($0 / 512 * 512) }
  }
}
