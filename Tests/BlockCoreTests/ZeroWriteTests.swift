import BlockCore
import BlockDrivers
import BlockTestSupport
import Testing

extension EngineTests {
  /// Zero-writes, as QEMU 7.2's `bdrv_co_pwrite_zeroes` → `bdrv_co_do_zero_pwritev`
  /// → `bdrv_co_do_pwrite_zeroes` cut them: read-modify-write of unaligned head
  /// and tail blocks, an aligned body cut at the zero-write alignment and
  /// maximum, a zeroed bounce buffer (at most 16 MiB) when the driver cannot,
  /// and the flags MAY_UNMAP, NO_FALLBACK and FUA.
  @Suite("Zero writes")
  @BlockActor
  struct ZeroWriteTests {
    /// A driver that writes zeroes efficiently and may unmap.
    private func zeroCapable(_ change: (inout DriverCapabilities) -> Void = { _ in })
      -> DriverCapabilities
    {
      recordingCapabilities {
        $0.canWriteZeroes = true
        $0.supportedZeroFlags = [.mayUnmap]
        change(&$0)
      }
    }

    @Test("head up to the zero alignment, body pieces of at most maxPwriteZeroes, tail")
    func headBodyTail() async throws {
      let align = 64 * kib
      let maximum = 4 * align
      let (node, driver) = try await makeRecordingNode(
        size: 2 * mib, capabilities: zeroCapable(),
        limits: limits(pwriteZeroesAlignment: align, maxPwriteZeroes: maximum))
      driver.memory.populate(at: 0, bytes: pattern(2 * mib))
      // 16 KiB into the first block, 16 KiB into the block after the end.
      let offset = 16 * kib
      let bytes = 1 * mib
      try await node.writeZeroes(at: offset, count: bytes)
      #expect(
        driver.ioCalls == [
          .writeZeroes(offset: offset, length: align - offset, flags: []),
          .writeZeroes(offset: align, length: maximum, flags: []),
          .writeZeroes(offset: align + maximum, length: maximum, flags: []),
          .writeZeroes(offset: align + 2 * maximum, length: maximum, flags: []),
          // What is left up to the last boundary is less than the maximum.
          .writeZeroes(
            offset: align + 3 * maximum, length: 1 * mib - align - 3 * maximum, flags: []),
          .writeZeroes(offset: 1 * mib, length: offset, flags: []),
        ])
      let content = try await node.read(at: 0, count: Int(2 * mib))
      let expected = pattern(2 * mib)
      #expect(content[..<Int(offset)] == expected[..<Int(offset)])
      #expect(content[Int(offset)..<Int(offset + bytes)].allSatisfy { $0 == 0 })
      #expect(content[Int(offset + bytes)...] == expected[Int(offset + bytes)...])
    }

    @Test("a zero-write inside one alignment block is a single piece")
    func insideOneAlignmentBlock() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, capabilities: zeroCapable(), limits: limits(pwriteZeroesAlignment: 64 * kib))
      try await node.writeZeroes(at: 4 * kib, count: 8 * kib)
      #expect(driver.ioCalls == [.writeZeroes(offset: 4 * kib, length: 8 * kib, flags: [])])
    }

    @Test("maxPwriteZeroes is rounded down to the zero alignment")
    func maximumRoundedDownToAlignment() async throws {
      let align = 64 * kib
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, capabilities: zeroCapable(),
        limits: limits(pwriteZeroesAlignment: align, maxPwriteZeroes: 100 * kib))
      try await node.writeZeroes(at: 0, count: 3 * align)
      #expect(
        driver.ioCalls == [
          .writeZeroes(offset: 0, length: align, flags: []),
          .writeZeroes(offset: align, length: align, flags: []),
          .writeZeroes(offset: 2 * align, length: align, flags: []),
        ])
    }

    @Test("head pieces are limited to maxTransfer, the aligned body is not")
    func headLimitedToMaxTransfer() async throws {
      let align = 64 * kib
      let transfer = 8 * kib
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, capabilities: zeroCapable(),
        limits: limits(maxTransfer: transfer, pwriteZeroesAlignment: align))
      try await node.writeZeroes(at: 16 * kib, count: align + 64 * kib)
      // QEMU: "For convenience, limit this request to max_transfer even if we
      // don't need to fall back to writes."
      var head: [DriverCall] = []
      var position = 16 * kib
      while position < align {
        head.append(.writeZeroes(offset: position, length: transfer, flags: []))
        position += transfer
      }
      #expect(head.count == 6)
      #expect(
        driver.ioCalls
          == head + [
            .writeZeroes(offset: align, length: align, flags: []),
            .writeZeroes(offset: 2 * align, length: 16 * kib, flags: []),
          ])
    }

    @Test("without zero-write support: bounce writes of at most 16 MiB (40 MiB → 16 + 16 + 8)")
    func bounceFallback() async throws {
      let (node, driver) = try await makeRecordingNode(size: 64 * mib)
      #expect(BlockNode.maxZeroBounceBuffer == 16 * mib)
      driver.memory.populate(at: 20 * mib, bytes: pattern(4 * kib))
      try await node.writeZeroes(at: 0, count: 40 * mib)
      #expect(
        driver.ioCalls == [
          .write(offset: 0, length: 16 * mib, flags: []),
          .write(offset: 16 * mib, length: 16 * mib, flags: []),
          .write(offset: 32 * mib, length: 8 * mib, flags: []),
        ])
      #expect(try await node.read(at: 20 * mib, count: Int(4 * kib)) == zeroes(4 * kib))
    }

    @Test("bounce writes are also limited to maxTransfer")
    func bounceFallbackWithinMaxTransfer() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 8 * mib, limits: limits(maxTransfer: 1 * mib))
      try await node.writeZeroes(at: 0, count: 3 * mib)
      #expect(
        driver.ioCalls == [
          .write(offset: 0, length: 1 * mib, flags: []),
          .write(offset: 1 * mib, length: 1 * mib, flags: []),
          .write(offset: 2 * mib, length: 1 * mib, flags: []),
        ])
    }

    @Test("ENOTSUP from the driver falls back to a bounce write for that piece only")
    func notSupportedPieceFallsBack() async throws {
      let align = 64 * kib
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, capabilities: zeroCapable(), limits: limits(pwriteZeroesAlignment: align))
      let head = DriverCall.writeZeroes(offset: 16 * kib, length: align - 16 * kib, flags: [])
      failCalls(on: driver, with: .notSupported("unaligned")) { $0 == head }
      try await node.writeZeroes(at: 16 * kib, count: 2 * align)
      #expect(
        driver.ioCalls == [
          head,
          .write(offset: 16 * kib, length: align - 16 * kib, flags: []),
          .writeZeroes(offset: align, length: align, flags: []),
          .writeZeroes(offset: 2 * align, length: 16 * kib, flags: []),
        ])
    }

    @Test("NO_FALLBACK without zero-write support fails with ENOTSUP and writes nothing")
    func noFallbackWithoutSupport() async throws {
      let (node, driver) = try await makeRecordingNode(size: 1 * mib)
      let error = await #expect(throws: BlockError.self) {
        try await node.writeZeroes(at: 0, count: 64 * kib, flags: .noFallback)
      }
      #expect(error?.code == .notSupported)
      #expect(driver.ioCalls.isEmpty)
    }

    @Test("NO_FALLBACK fails with ENOTSUP when the driver does not declare it")
    func noFallbackUndeclared() async throws {
      let (node, driver) = try await makeRecordingNode(size: 1 * mib, capabilities: zeroCapable())
      let error = await #expect(throws: BlockError.self) {
        try await node.writeZeroes(at: 0, count: 64 * kib, flags: .noFallback)
      }
      #expect(error?.code == .notSupported)
      #expect(driver.ioCalls.isEmpty)
    }

    @Test("NO_FALLBACK reaches a driver that declares it; its ENOTSUP is not bounced")
    func noFallbackDeclared() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, capabilities: zeroCapable { $0.supportedZeroFlags.insert(.noFallback) })
      try await node.writeZeroes(at: 0, count: 64 * kib, flags: .noFallback)
      #expect(driver.ioCalls == [.writeZeroes(offset: 0, length: 64 * kib, flags: .noFallback)])

      driver.reset()
      failCalls(on: driver, with: .notSupported("slow"), where: \.isWriteZeroes)
      let error = await #expect(throws: BlockError.self) {
        try await node.writeZeroes(at: 64 * kib, count: 64 * kib, flags: .noFallback)
      }
      #expect(error?.code == .notSupported)
      #expect(
        driver.ioCalls == [.writeZeroes(offset: 64 * kib, length: 64 * kib, flags: .noFallback)])
    }

    @Test("NO_FALLBACK on an unaligned zero-write fails with ENOTSUP before any read")
    func noFallbackUnaligned() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib,
        capabilities: zeroCapable {
          $0.byteGranular = false
          $0.supportedZeroFlags.insert(.noFallback)
        })
      #expect(node.limits.requestAlignment == 512)
      let error = await #expect(throws: BlockError.self) {
        try await node.writeZeroes(at: 100, count: 1000, flags: .noFallback)
      }
      #expect(error?.code == .notSupported)
      #expect(driver.ioCalls.isEmpty)
    }

    struct UnmapCase: Sendable, CustomTestStringConvertible {
      let discard: DiscardMode
      let driverAccepts: Bool
      let driverSees: RequestFlags
      var testDescription: String {
        "discard=\(discard.rawValue), driver \(driverAccepts ? "accepts" : "lacks") MAY_UNMAP"
      }
    }

    @Test(
      "MAY_UNMAP reaches the driver only with discard=unmap and declared support",
      arguments: [
        UnmapCase(discard: .unmap, driverAccepts: true, driverSees: .mayUnmap),
        UnmapCase(discard: .unmap, driverAccepts: false, driverSees: []),
        UnmapCase(discard: .ignore, driverAccepts: true, driverSees: []),
        UnmapCase(discard: .ignore, driverAccepts: false, driverSees: []),
      ])
    func mayUnmap(_ unmap: UnmapCase) async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib,
        capabilities: zeroCapable { $0.supportedZeroFlags = unmap.driverAccepts ? .mayUnmap : [] },
        options: NodeOptions(discard: unmap.discard))
      try await node.writeZeroes(at: 0, count: 64 * kib, flags: .mayUnmap)
      #expect(
        driver.ioCalls == [.writeZeroes(offset: 0, length: 64 * kib, flags: unmap.driverSees)])
      // Unmapped, the range is a hole (zero because there is no backing node);
      // otherwise it is allocated as zeroes.
      let status = try await node.blockStatus(offset: 0, bytes: 64 * kib, wantZero: true)
      let allocated: BlockStatusFlags = unmap.driverSees.contains(.mayUnmap) ? [] : .allocated
      #expect(status.flags == allocated.union(.zero))
    }

    @Test("an unaligned zero-write reads head and tail, rewrites them and zero-writes the body")
    func unalignedReadModifyWrite() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, capabilities: zeroCapable { $0.byteGranular = false },
        options: NodeOptions(discard: .unmap))
      driver.memory.populate(at: 0, bytes: pattern(2048))
      try await node.writeZeroes(at: 100, count: 1000, flags: .mayUnmap)
      // Head block [0, 512) and tail block [1024, 1536) are read, patched and
      // written as data (MAY_UNMAP means nothing to a write); the block between
      // them is a zero-write.
      #expect(
        driver.ioCalls == [
          .read(offset: 0, length: 512),
          .read(offset: 1024, length: 512),
          .write(offset: 0, length: 512, flags: []),
          .writeZeroes(offset: 512, length: 512, flags: .mayUnmap),
          .write(offset: 1024, length: 512, flags: []),
        ])
      let content = try await node.read(at: 0, count: 2048)
      #expect(content[..<100] == pattern(2048)[..<100])
      #expect(content[100..<1100].allSatisfy { $0 == 0 })
      #expect(content[1100...] == pattern(2048)[1100...])
    }

    @Test("a zero-write inside one block is one read and one write of that block")
    func unalignedWithinOneBlock() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, capabilities: zeroCapable { $0.byteGranular = false })
      try await node.writeZeroes(at: 100, count: 200)
      #expect(
        driver.ioCalls == [
          .read(offset: 0, length: 512), .write(offset: 0, length: 512, flags: []),
        ])
    }

    @Test("head and tail in adjacent blocks are read and written together")
    func unalignedAdjacentBlocksMerged() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, capabilities: zeroCapable { $0.byteGranular = false })
      try await node.writeZeroes(at: 300, count: 400)
      #expect(
        driver.ioCalls == [
          .read(offset: 0, length: 1024), .write(offset: 0, length: 1024, flags: []),
        ])
    }

    @Test("an aligned start with an unaligned end reads and rewrites only the tail block")
    func unalignedTailOnly() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, capabilities: zeroCapable { $0.byteGranular = false })
      try await node.writeZeroes(at: 512, count: 700)
      #expect(
        driver.ioCalls == [
          .read(offset: 1024, length: 512),
          .writeZeroes(offset: 512, length: 512, flags: []),
          .write(offset: 1024, length: 512, flags: []),
        ])
    }

    @Test("FUA on a driver without zero-write FUA: the pieces, then one flush")
    func fuaEmulatedOnceAtTheEnd() async throws {
      let align = 64 * kib
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, capabilities: zeroCapable(),
        limits: limits(pwriteZeroesAlignment: align, maxPwriteZeroes: align))
      try await node.writeZeroes(at: 0, count: 3 * align, flags: .fua)
      #expect(
        driver.ioCalls == [
          .writeZeroes(offset: 0, length: align, flags: []),
          .writeZeroes(offset: align, length: align, flags: []),
          .writeZeroes(offset: 2 * align, length: align, flags: []),
          .flushToOS, .flushToDisk,
        ])
    }

    @Test("FUA on bounce writes of a driver without FUA: the writes, then one flush")
    func fuaEmulatedOnceAfterBounceWrites() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 8 * mib, limits: limits(maxTransfer: 1 * mib))
      try await node.writeZeroes(at: 0, count: 3 * mib, flags: .fua)
      #expect(
        driver.ioCalls == [
          .write(offset: 0, length: 1 * mib, flags: []),
          .write(offset: 1 * mib, length: 1 * mib, flags: []),
          .write(offset: 2 * mib, length: 1 * mib, flags: []),
          .flushToOS, .flushToDisk,
        ])
    }

    @Test("FUA passes to a driver that accepts it, with no flush")
    func fuaPassedThrough() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, capabilities: zeroCapable { $0.supportedZeroFlags.insert(.fua) })
      try await node.writeZeroes(at: 0, count: 64 * kib, flags: .fua)
      #expect(driver.ioCalls == [.writeZeroes(offset: 0, length: 64 * kib, flags: .fua)])

      let (bounced, bounceDriver) = try await makeRecordingNode(
        size: 8 * mib, capabilities: recordingCapabilities { $0.supportedWriteFlags = .fua },
        limits: limits(maxTransfer: 1 * mib))
      try await bounced.writeZeroes(at: 0, count: 2 * mib, flags: .fua)
      #expect(
        bounceDriver.ioCalls == [
          .write(offset: 0, length: 1 * mib, flags: .fua),
          .write(offset: 1 * mib, length: 1 * mib, flags: .fua),
        ])
    }

    @Test("a read-only node refuses zero-writes with EPERM; zero bytes reach nothing")
    func readOnlyAndEmpty() async throws {
      let (readOnly, readOnlyDriver) = try await makeRecordingNode(
        size: 1 * mib, capabilities: zeroCapable(), options: NodeOptions(readOnly: true))
      let error = await #expect(throws: BlockError.self) {
        try await readOnly.writeZeroes(at: 0, count: 4 * kib)
      }
      #expect(error?.code == .notPermitted)
      #expect(readOnlyDriver.calls.isEmpty)

      let (node, driver) = try await makeRecordingNode(size: 1 * mib, capabilities: zeroCapable())
      try await node.writeZeroes(at: 4 * kib, count: 0)
      #expect(driver.calls.isEmpty)
    }

    @Test("an unlimited driver gets a zero-write beyond 2 GiB in one call")
    func beyondTwoGiBInOneCall() async throws {
      // QEMU ≥ 6.2 ("block/io: allow 64bit write-zeroes requests"):
      // max_write_zeroes = MIN_NON_ZERO(bl.max_pwrite_zeroes, INT64_MAX).
      let (node, driver) = try await makeRecordingNode(size: 4 * gib, capabilities: zeroCapable())
      try await node.writeZeroes(at: 0, count: 3 * gib)
      #expect(driver.ioCalls == [.writeZeroes(offset: 0, length: 3 * gib, flags: [])])

    }
  }
}
