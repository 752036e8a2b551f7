import BlockCore
import BlockDrivers
import BlockTestSupport
import Testing

extension EngineTests {
  /// Copy-on-read, as QEMU 7.2's `bdrv_aligned_preadv` and
  /// `bdrv_co_do_copy_on_readv` do it: the request serialises at the cluster
  /// size; when it is not wholly allocated in the node, the cluster-rounded
  /// range is walked chunk by chunk (at most max_transfer, and never past the
  /// end of the image): allocated chunks are read straight into the caller's
  /// buffer, unallocated ones are read into a bounce buffer and written back
  /// (all-zero ones as zero-writes) with WRITE_UNCHANGED.
  @Suite("Copy-on-read")
  @BlockActor
  struct CopyOnReadTests {
    let cluster = 64 * kib

    /// The backing node's bytes when it holds data.
    private var backingBytes: [UInt8] { pattern(256 * kib, seed: 1) }

    /// A top node with 64 KiB clusters over a backing node of the same size
    /// that holds ``backingBytes`` (or nothing).
    private func chain(
      size: Int64 = 256 * kib, options: NodeOptions = NodeOptions(copyOnRead: true),
      capabilities: DriverCapabilities = recordingCapabilities(),
      limits: BlockLimits = BlockLimits(), backingHoldsData: Bool = true
    ) async throws -> (top: BlockNode, topDriver: RecordingDriver, backingDriver: RecordingDriver) {
      let (backing, backingDriver) = try await makeRecordingNode(size: size, name: "backing")
      if backingHoldsData {
        backingDriver.memory.populate(at: 0, bytes: Array(backingBytes[..<Int(size)]))
      }
      let (top, topDriver) = try await makeRecordingNode(
        size: size, capabilities: capabilities, limits: limits, options: options,
        clusterSize: cluster, backing: backing, name: "top")
      return (top, topDriver, backingDriver)
    }

    @Test("an unallocated read copies exactly its cluster-rounded range into the top node")
    func copiesClusterRoundedRange() async throws {
      let (top, topDriver, backingDriver) = try await chain()
      let data = try await top.read(at: 10_000, count: 10_000)
      #expect(data == Array(backingBytes[10_000..<20_000]))
      #expect(
        topDriver.ioCalls == [
          .read(offset: 0, length: cluster), .write(offset: 0, length: cluster, flags: []),
        ])
      #expect(backingDriver.ioCalls == [.read(offset: 0, length: cluster)])

      // Copied, the range is the top node's own: no second copy.
      topDriver.reset()
      backingDriver.reset()
      #expect(try await top.read(at: 10_000, count: 10_000) == data)
      #expect(topDriver.ioCalls == [.read(offset: 10_000, length: 10_000)])
      #expect(backingDriver.ioCalls.isEmpty)
    }

    @Test("a read across a cluster boundary copies both clusters")
    func copiesAcrossClusterBoundary() async throws {
      let (top, topDriver, _) = try await chain()
      let data = try await top.read(at: cluster - 4 * kib, count: Int(8 * kib))
      #expect(data == Array(backingBytes[Int(cluster - 4 * kib)..<Int(cluster + 4 * kib)]))
      #expect(
        topDriver.ioCalls == [
          .read(offset: 0, length: 2 * cluster), .write(offset: 0, length: 2 * cluster, flags: []),
        ])
    }

    @Test("the per-request flag and enableCopyOnRead turn copying on for one read or a user")
    func perRequestFlagAndUserCount() async throws {
      let (top, topDriver, _) = try await chain(options: NodeOptions())
      _ = try await top.read(at: 10_000, count: 10_000)
      #expect(topDriver.ioCalls == [.read(offset: 10_000, length: 10_000)])

      topDriver.reset()
      try await top.read(at: 10_000, into: IOVector(allocating: 10_000), flags: .copyOnRead)
      #expect(
        topDriver.ioCalls == [
          .read(offset: 0, length: cluster), .write(offset: 0, length: cluster, flags: []),
        ])

      topDriver.reset()
      top.enableCopyOnRead()
      _ = try await top.read(at: cluster + 10_000, count: 10_000)
      #expect(
        topDriver.ioCalls == [
          .read(offset: cluster, length: cluster),
          .write(offset: cluster, length: cluster, flags: []),
        ])

      topDriver.reset()
      top.disableCopyOnRead()
      _ = try await top.read(at: 2 * cluster + 10_000, count: 10_000)
      #expect(topDriver.ioCalls == [.read(offset: 2 * cluster + 10_000, length: 10_000)])
    }

    @Test("an all-zero cluster is copied as a zero-write when the driver can write zeroes")
    func zeroClusterBecomesZeroWrite() async throws {
      let (top, topDriver, _) = try await chain(
        capabilities: recordingCapabilities { $0.canWriteZeroes = true }, backingHoldsData: false)
      #expect(try await top.read(at: 10_000, count: 10_000) == zeroes(10_000))
      #expect(
        topDriver.ioCalls == [
          .read(offset: 0, length: cluster), .writeZeroes(offset: 0, length: cluster, flags: []),
        ])

      let (plain, plainDriver, _) = try await chain(backingHoldsData: false)
      _ = try await plain.read(at: 10_000, count: 10_000)
      #expect(
        plainDriver.ioCalls == [
          .read(offset: 0, length: cluster), .write(offset: 0, length: cluster, flags: []),
        ])
    }

    @Test("a fully allocated range is read, not copied")
    func allocatedRangeIsNotCopied() async throws {
      let (top, topDriver, backingDriver) = try await chain()
      topDriver.memory.populate(at: 0, bytes: pattern(cluster, seed: 5))
      #expect(
        try await top.read(at: 1000, count: 1000) == Array(pattern(cluster, seed: 5)[1000..<2000]))
      #expect(topDriver.ioCalls == [.read(offset: 1000, length: 1000)])
      #expect(backingDriver.ioCalls.isEmpty)
    }

    @Test("a read over an allocated and an unallocated cluster copies exactly the unallocated one")
    func halfAllocatedRange() async throws {
      let (top, topDriver, _) = try await chain()
      let own = pattern(cluster, seed: 5)
      topDriver.memory.populate(at: 0, bytes: own)
      let data = try await top.read(at: cluster / 2, count: Int(cluster))
      #expect(
        data == Array(own[Int(cluster / 2)...]) + backingBytes[Int(cluster)..<Int(3 * cluster / 2)])
      #expect(
        topDriver.ioCalls == [
          .read(offset: cluster / 2, length: cluster / 2),  // straight into the caller's buffer
          .read(offset: cluster, length: cluster),  // bounce
          .write(offset: cluster, length: cluster, flags: []),
        ])

    }

    @Test("a write overlapping the cluster being copied waits for the copy; others do not")
    func overlappingWriteWaits() async throws {
      let (top, topDriver, _) = try await chain()
      let holder = CallHolder(\.isRead)
      holder.install(on: topDriver)
      let reader = Task { @BlockActor in try await top.read(at: 4 * kib, count: Int(4 * kib)) }
      await holder.gate.waitForHeld(1)  // the copy's bounce read is at the driver

      // Another cluster: not serialised against the copy.
      try await top.write(at: cluster, bytes: pattern(4 * kib, seed: 7))
      // The same cluster (but not the same bytes): must wait.
      let overlapping = DriverCall.write(offset: cluster / 2, length: 4 * kib, flags: [])
      let writer = Task { @BlockActor in
        try await top.write(at: cluster / 2, bytes: pattern(4 * kib, seed: 9))
      }
      try await waitUntil("the overlapping write is in flight") {
        top.inFlight == 2 || topDriver.calls.contains(overlapping)
      }
      #expect(!topDriver.calls.contains(overlapping))

      holder.gate.releaseAll()
      _ = try await reader.value
      try await writer.value
      #expect(
        topDriver.ioCalls == [
          .read(offset: 0, length: cluster),
          .write(offset: cluster, length: 4 * kib, flags: []),
          .write(offset: 0, length: cluster, flags: []),  // the copy
          overlapping,
        ])
      #expect(try await top.read(at: cluster / 2, count: Int(4 * kib)) == pattern(4 * kib, seed: 9))
    }

    @Test("copy chunks are at most maxTransfer")
    func chunksWithinMaxTransfer() async throws {
      let transfer = cluster / 2
      let (top, topDriver, _) = try await chain(limits: limits(maxTransfer: transfer))
      #expect(try await top.read(at: 0, count: Int(4 * kib)) == Array(backingBytes[..<4096]))
      #expect(
        topDriver.ioCalls == [
          .read(offset: 0, length: transfer), .write(offset: 0, length: transfer, flags: []),
          .read(offset: transfer, length: transfer),
          .write(offset: transfer, length: transfer, flags: []),
        ])

    }

    @Test("the copy stops at the end of an image that ends inside a cluster")
    func stopsAtEndOfImage() async throws {
      let size = cluster + 36 * kib
      let (top, topDriver, _) = try await chain(size: size)
      let data = try await top.read(at: cluster, count: Int(size - cluster))
      #expect(data == Array(backingBytes[Int(cluster)..<Int(size)]))
      #expect(top.length == size)
      let storedLength = try await topDriver.length(top)
      #expect(
        topDriver.ioCalls == [
          .read(offset: cluster, length: size - cluster),
          .write(offset: cluster, length: size - cluster, flags: []),
        ])
      #expect(storedLength == size)

    }

    @Test("the copy's write carries WRITE_UNCHANGED to a driver that accepts it")
    func dataCopyIsWriteUnchanged() async throws {
      let (top, topDriver, _) = try await chain(
        capabilities: recordingCapabilities { $0.supportedWriteFlags = .writeUnchanged })
      _ = try await top.read(at: 0, count: 512)
      #expect(
        topDriver.ioCalls == [
          .read(offset: 0, length: cluster),
          .write(offset: 0, length: cluster, flags: .writeUnchanged),
        ])
    }

    @Test("the copy's zero-write carries WRITE_UNCHANGED to a driver that accepts it")
    func zeroCopyIsWriteUnchanged() async throws {
      let (top, topDriver, _) = try await chain(
        capabilities: recordingCapabilities {
          $0.canWriteZeroes = true
          $0.supportedZeroFlags = .writeUnchanged
        },
        backingHoldsData: false)
      _ = try await top.read(at: 0, count: 512)
      #expect(
        topDriver.ioCalls == [
          .read(offset: 0, length: cluster),
          .writeZeroes(offset: 0, length: cluster, flags: .writeUnchanged),
        ])

    }
  }
}
