import BlockCore

/// A sparse in-memory disk with an allocation map and optional backing node.
///
/// Ranges are *data* (written), *zero* (zero-written without unmapping) or
/// unallocated. Unallocated ranges read from the backing node when one is
/// attached, else as zeroes, so backing-chain behaviour can be tested without an
/// image format. Zero-writes with MAY_UNMAP and discards deallocate.
@BlockActor
public final class MemoryDriver: BlockDriver {
  /// The bytes.
  public let store: SparseStore
  /// Ranges holding written data.
  public private(set) var dataRanges = ExtentSet()
  /// Ranges that were zero-written (read as zeroes, allocated).
  public private(set) var zeroRanges = ExtentSet()
  private var size: Int64
  private let cluster: Int64?

  /// Creates an empty disk of `size` bytes. `clusterSize`, when given, is the
  /// allocation unit reported to copy-on-read.
  public init(size: Int64, pageSize: Int64 = 65536, clusterSize: Int64? = nil) {
    self.size = size
    store = SparseStore(pageSize: pageSize)
    cluster = clusterSize
  }

  public nonisolated var formatName: String { "memory" }

  public var capabilities: DriverCapabilities {
    var capabilities = DriverCapabilities(kind: .protocolDriver)
    capabilities.hasBlockStatus = true
    capabilities.canWriteZeroes = true
    capabilities.supportedZeroFlags = [.mayUnmap]
    capabilities.supportsBacking = true
    return capabilities
  }

  /// Reopening changes nothing of the driver's (`size` must keep its value).
  public func prepareReopen(_ node: BlockNode, _ request: inout BlockReopenRequest) async throws
    -> any BlockReopenChange
  { UnchangedReopen() }

  public func length(_ node: BlockNode) async throws -> Int64 { size }

  public func clusterSize(_ node: BlockNode) -> Int64? { cluster }

  /// Marks a range allocated with the given bytes, bypassing the engine (test setup).
  public func populate(at offset: Int64, bytes: [UInt8]) {
    store.write(at: offset, from: IOVector(copying: bytes))
    markData(offset..<offset + Int64(bytes.count))
  }

  private func markData(_ range: Range<Int64>) {
    dataRanges.insert(range)
    zeroRanges.remove(range)
  }

  private func deallocate(_ range: Range<Int64>) {
    dataRanges.remove(range)
    zeroRanges.remove(range)
    store.zero(at: range.lowerBound, count: Int64(range.count))
  }

  public func read(
    _ node: BlockNode, offset: Int64, length: Int64, into iov: IOVector, flags: RequestFlags
  ) async throws {
    var done: Int64 = 0
    while done < length {
      let position = offset + done
      let (isData, dataCount) = dataRanges.lookup(position, limit: length - done)
      let (isZero, zeroCount) = zeroRanges.lookup(position, limit: length - done)
      let piece = iov.slice(Int(done), Int(isData ? dataCount : min(dataCount, zeroCount)))
      if isData {
        store.read(at: position, into: piece)
      } else if isZero || node.backing == nil {
        piece.fill(0)
      } else if let backing = node.backing {
        try await backing.read(at: position, into: piece)
      }
      done += Int64(piece.count)
    }
  }

  public func write(
    _ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector, flags: RequestFlags
  ) async throws {
    store.write(at: offset, from: iov)
    markData(offset..<offset + length)
    size = max(size, offset + length)
  }

  public func writeZeroes(_ node: BlockNode, offset: Int64, length: Int64, flags: RequestFlags)
    async throws
  {
    let range = offset..<offset + length
    deallocate(range)
    if !(flags.contains(.mayUnmap) && node.backing == nil) { zeroRanges.insert(range) }
    size = max(size, offset + length)
  }

  public func discard(_ node: BlockNode, offset: Int64, length: Int64) async throws {
    deallocate(offset..<offset + length)
  }

  public func blockStatus(_ node: BlockNode, wantZero: Bool, offset: Int64, length: Int64)
    async throws -> BlockStatus
  {
    let (isData, dataCount) = dataRanges.lookup(offset, limit: length)
    if isData {
      return BlockStatus(
        flags: [.data, .offsetValid], count: dataCount, mapOffset: offset,
        file: node)
    }
    let (isZero, zeroCount) = zeroRanges.lookup(offset, limit: length)
    let count = min(dataCount, zeroCount)
    return BlockStatus(flags: isZero ? [.zero] : [], count: count)
  }

  public func truncate(
    _ node: BlockNode, to length: Int64, exact: Bool, preallocation: PreallocationMode
  ) async throws {
    if length < size { deallocate(length..<size) }
    size = length
  }
}
