import BlockCore

/// QEMU's `null-co` protocol: a device of a given size that discards writes and
/// returns nothing (or zeroes, with `read-zeroes=on`) on reads. For benchmarks
/// and tests.
@BlockActor
public final class NullDriver: BlockDriver {
  /// The device size (QEMU's `size`, default 1 GiB).
  public let size: Int64
  /// Whether reads fill the buffer with zeroes (QEMU's `read-zeroes`, default off).
  public let readZeroes: Bool
  /// Simulated latency of every request in nanoseconds (QEMU's `latency-ns`).
  public let latencyNanoseconds: UInt64

  /// Creates a null device.
  public init(size: Int64 = 1 << 30, readZeroes: Bool = false, latencyNanoseconds: UInt64 = 0) {
    self.size = size
    self.readZeroes = readZeroes
    self.latencyNanoseconds = latencyNanoseconds
  }

  public nonisolated var formatName: String { "null-co" }

  public var capabilities: DriverCapabilities {
    var capabilities = DriverCapabilities(kind: .protocolDriver)
    capabilities.hasBlockStatus = true
    return capabilities
  }

  /// QEMU's `null_reopen_prepare`: nothing of the driver's may change
  /// (`size`, `read-zeroes` and `latency-ns` must keep their values).
  public func prepareReopen(_ node: BlockNode, _ request: inout BlockReopenRequest) async throws
    -> any BlockReopenChange
  { UnchangedReopen() }

  public func length(_ node: BlockNode) async throws -> Int64 { size }

  private func delay() async throws {
    if latencyNanoseconds > 0 { try await Task.sleep(nanoseconds: latencyNanoseconds) }
  }

  public func read(
    _ node: BlockNode, offset: Int64, length: Int64, into iov: IOVector, flags: RequestFlags
  ) async throws {
    if readZeroes { iov.fill(0) }
    try await delay()
  }

  public func write(
    _ node: BlockNode, offset: Int64, length: Int64, from iov: IOVector, flags: RequestFlags
  ) async throws {
    try await delay()
  }

  public func flushToDisk(_ node: BlockNode) async throws { try await delay() }

  public func blockStatus(_ node: BlockNode, wantZero: Bool, offset: Int64, length: Int64)
    async throws -> BlockStatus
  {
    BlockStatus(
      flags: readZeroes ? [.offsetValid, .zero] : [.offsetValid], count: length,
      mapOffset: offset, file: node)
  }
}
