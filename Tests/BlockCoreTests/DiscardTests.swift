import BlockCore
import BlockDrivers
import BlockTestSupport
import Testing

extension EngineTests {
  /// Discards, as QEMU 7.2's `bdrv_co_pdiscard` cuts them: nothing when the node
  /// ignores discards; otherwise small pieces up to the request alignment and
  /// then to the discard alignment, aligned pieces of at most maxPdiscard, and
  /// tail pieces back down to the request alignment; ENOTSUP is success.
  @Suite("Discard")
  @BlockActor
  struct DiscardTests {
    private func node(
      discard: DiscardMode = .unmap, readOnly: Bool = false, byteGranular: Bool = true,
      limits: BlockLimits = BlockLimits()
    ) async throws -> (BlockNode, RecordingDriver) {
      try await makeRecordingNode(
        size: 1 * mib, capabilities: recordingCapabilities { $0.byteGranular = byteGranular },
        limits: limits, options: NodeOptions(readOnly: readOnly, discard: discard))
    }

    @Test("discard=ignore: no driver call, no error")
    func ignored() async throws {
      let (node, driver) = try await node(discard: .ignore)
      try await node.discard(at: 0, count: 64 * kib)
      try await node.discard(at: 100, count: 1000)
      #expect(driver.calls.isEmpty)
    }

    @Test("discard=unmap without limits: one call for the whole range")
    func wholeRange() async throws {
      let (node, driver) = try await node()
      try await node.discard(at: 100, count: 200 * kib)
      #expect(driver.ioCalls == [.discard(offset: 100, length: 200 * kib)])
    }

    @Test("head piece to the discard alignment, aligned pieces of at most maxPdiscard, tail")
    func byteGranularPieces() async throws {
      let align = 64 * kib
      let maximum = 2 * align
      let (node, driver) = try await node(
        limits: limits(pdiscardAlignment: align, maxPdiscard: maximum))
      let offset = 4 * kib
      let end = 4 * align + 48 * kib
      try await node.discard(at: offset, count: end - offset)
      #expect(
        driver.ioCalls == [
          .discard(offset: offset, length: align - offset),
          .discard(offset: align, length: maximum),
          .discard(offset: align + maximum, length: align),
          .discard(offset: 4 * align, length: 48 * kib),
        ])
    }

    @Test("with a 512-byte request alignment, head and tail pieces step through it")
    func sectorGranularPieces() async throws {
      // QEMU 7.2: a head piece that does not end on the request alignment is
      // cut to `num % request_alignment` first; a tail longer than the request
      // alignment and not a multiple of it is cut back to a multiple of it.
      let (node, driver) = try await node(
        byteGranular: false, limits: limits(pdiscardAlignment: 4096))
      #expect(node.limits.requestAlignment == 512)
      let sector: Int64 = 512
      let align: Int64 = 4096
      let offset: Int64 = 1000
      let end = 3 * align + 1000
      try await node.discard(at: offset, count: end - offset)
      let expected: [DriverCall] = [
        .discard(offset: offset, length: 2 * sector - offset),  // to the request alignment
        .discard(offset: 2 * sector, length: align - 2 * sector),  // to the discard alignment
        .discard(offset: align, length: 2 * align),  // the aligned body
        .discard(offset: 3 * align, length: sector),  // the tail's whole sectors
        .discard(offset: 3 * align + sector, length: end - 3 * align - sector),  // the rest
      ]
      #expect(driver.ioCalls == expected)
    }

    @Test("a discard inside one alignment block is a single piece")
    func insideOneAlignmentBlock() async throws {
      let (node, driver) = try await node(limits: limits(pdiscardAlignment: 64 * kib))
      try await node.discard(at: 4 * kib, count: 8 * kib)
      #expect(driver.ioCalls == [.discard(offset: 4 * kib, length: 8 * kib)])
    }

    @Test("ENOTSUP from the driver is success, and every piece is still tried")
    func notSupportedIsSuccess() async throws {
      let align = 64 * kib
      let (node, driver) = try await node(limits: limits(pdiscardAlignment: align))
      failCalls(on: driver, with: .notSupported("no discard"), where: \.isDiscard)
      try await node.discard(at: 4 * kib, count: 2 * align)
      #expect(
        driver.ioCalls == [
          .discard(offset: 4 * kib, length: align - 4 * kib),
          .discard(offset: align, length: align),
          .discard(offset: 2 * align, length: 4 * kib),
        ])
    }

    @Test("another error stops the discard and is reported")
    func otherErrorStops() async throws {
      let align = 64 * kib
      let (node, driver) = try await node(limits: limits(pdiscardAlignment: align))
      let second = DriverCall.discard(offset: align, length: align)
      failCalls(on: driver, with: BlockError(.ioError, "injected")) { $0 == second }
      let error = await #expect(throws: BlockError.self) {
        try await node.discard(at: 4 * kib, count: 2 * align)
      }
      #expect(error?.code == .ioError)
      #expect(driver.ioCalls == [.discard(offset: 4 * kib, length: align - 4 * kib), second])
    }

    @Test("a read-only node refuses discards with EPERM", arguments: [DiscardMode.unmap, .ignore])
    func readOnly(_ mode: DiscardMode) async throws {
      let (node, driver) = try await node(discard: mode, readOnly: true)
      let error = await #expect(throws: BlockError.self) {
        try await node.discard(at: 0, count: 64 * kib)
      }
      #expect(error?.code == .notPermitted)
      #expect(driver.calls.isEmpty)
    }

    @Test("a negative offset is EIO; zero bytes reach nothing")
    func badAndEmptyRanges() async throws {
      let (node, driver) = try await node()
      let error = await #expect(throws: BlockError.self) {
        try await node.discard(at: -512, count: 512)
      }
      #expect(error?.code == .ioError)
      try await node.discard(at: 4 * kib, count: 0)
      #expect(driver.calls.isEmpty)
    }

    @Test("an unlimited driver gets a discard beyond 2 GiB in one call")
    func beyondTwoGiBInOneCall() async throws {
      // QEMU ≥ 6.2 ("block/io: allow 64bit discard requests"):
      // max_pdiscard = MIN_NON_ZERO(bl.max_pdiscard, INT64_MAX).
      let (node, driver) = try await makeRecordingNode(
        size: 4 * gib, options: NodeOptions(discard: .unmap))
      try await node.discard(at: 0, count: 3 * gib)
      #expect(driver.ioCalls == [.discard(offset: 0, length: 3 * gib)])

    }
  }
}
