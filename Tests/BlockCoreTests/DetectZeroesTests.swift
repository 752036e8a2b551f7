import BlockCore
import BlockDrivers
import BlockTestSupport
import Testing

extension EngineTests {
  /// detect-zeroes=off|on|unmap, as QEMU 7.2's `bdrv_aligned_pwritev` applies
  /// it: an all-zero aligned write on a driver that can write zeroes becomes a
  /// zero-write, with MAY_UNMAP for `unmap` (which QEMU only accepts together
  /// with discard=unmap); anything else stays a write.
  @Suite("detect-zeroes")
  @BlockActor
  struct DetectZeroesTests {
    private func node(
      detect: DetectZeroesMode, discard: DiscardMode = .ignore, unmapDeclared: Bool = true,
      canWriteZeroes: Bool = true, byteGranular: Bool = true, limits: BlockLimits = BlockLimits()
    ) async throws -> (BlockNode, RecordingDriver) {
      try await makeRecordingNode(
        size: 1 * mib,
        capabilities: recordingCapabilities {
          $0.canWriteZeroes = canWriteZeroes
          $0.supportedZeroFlags = unmapDeclared ? .mayUnmap : []
          $0.byteGranular = byteGranular
        },
        limits: limits, options: NodeOptions(discard: discard, detectZeroes: detect))
    }

    @Test("off: an all-zero buffer is written as data")
    func off() async throws {
      let (node, driver) = try await node(detect: .off, discard: .unmap)
      try await node.write(at: 0, bytes: zeroes(64 * kib))
      #expect(driver.ioCalls == [.write(offset: 0, length: 64 * kib, flags: [])])
    }

    @Test("on: an all-zero write becomes a zero-write without MAY_UNMAP")
    func on() async throws {
      let (node, driver) = try await node(detect: .on, discard: .unmap)
      try await node.write(at: 0, bytes: zeroes(64 * kib))
      #expect(driver.ioCalls == [.writeZeroes(offset: 0, length: 64 * kib, flags: [])])
    }

    @Test("unmap with discard=unmap: a zero-write with MAY_UNMAP")
    func unmapWithDiscardUnmap() async throws {
      let (node, driver) = try await node(detect: .unmap, discard: .unmap)
      try await node.write(at: 0, bytes: zeroes(64 * kib))
      #expect(driver.ioCalls == [.writeZeroes(offset: 0, length: 64 * kib, flags: .mayUnmap)])
    }

    @Test("unmap without discard=unmap: a zero-write that does not unmap")
    func unmapWithoutDiscardUnmap() async throws {
      let (node, driver) = try await node(detect: .unmap, discard: .ignore)
      try await node.write(at: 0, bytes: zeroes(64 * kib))
      #expect(driver.ioCalls == [.writeZeroes(offset: 0, length: 64 * kib, flags: [])])
    }

    @Test("unmap: MAY_UNMAP is dropped for a driver that does not declare it")
    func unmapUndeclared() async throws {
      let (node, driver) = try await node(detect: .unmap, discard: .unmap, unmapDeclared: false)
      try await node.write(at: 0, bytes: zeroes(64 * kib))
      #expect(driver.ioCalls == [.writeZeroes(offset: 0, length: 64 * kib, flags: [])])
    }

    @Test("non-zero data stays a write", arguments: [DetectZeroesMode.on, .unmap])
    func nonZeroData(_ mode: DetectZeroesMode) async throws {
      let (node, driver) = try await node(detect: mode, discard: .unmap)
      var bytes = zeroes(64 * kib)
      bytes[bytes.count - 1] = 1
      try await node.write(at: 0, bytes: bytes)
      #expect(driver.ioCalls == [.write(offset: 0, length: 64 * kib, flags: [])])
      #expect(try await node.read(at: 0, count: bytes.count) == bytes)
    }

    @Test(
      "no detection on a driver that cannot write zeroes", arguments: [DetectZeroesMode.on, .unmap])
    func driverWithoutZeroWrites(_ mode: DetectZeroesMode) async throws {
      let (node, driver) = try await node(
        detect: mode, discard: .unmap, unmapDeclared: false, canWriteZeroes: false)
      try await node.write(at: 0, bytes: zeroes(64 * kib))
      #expect(driver.ioCalls == [.write(offset: 0, length: 64 * kib, flags: [])])
    }

    @Test("an unaligned zero write over zeroes: RMW reads, then one zero-write of the padded range")
    func unalignedOverZeroes() async throws {
      let (node, driver) = try await node(detect: .on, byteGranular: false)
      try await node.write(at: 100, bytes: zeroes(1000))
      // The padded buffer [0, 1536) is the head and tail blocks read from disk
      // (zeroes) around the caller's zeroes: all zero.
      #expect(
        driver.ioCalls == [
          .read(offset: 0, length: 512),
          .read(offset: 1024, length: 512),
          .writeZeroes(offset: 0, length: 1536, flags: []),
        ])
    }

    @Test("an unaligned zero write over data: the padded buffer is not zero, so it is written")
    func unalignedOverData() async throws {
      let (node, driver) = try await node(detect: .on, byteGranular: false)
      driver.memory.populate(at: 0, bytes: pattern(512))
      try await node.write(at: 100, bytes: zeroes(1000))
      #expect(
        driver.ioCalls == [
          .read(offset: 0, length: 512),
          .read(offset: 1024, length: 512),
          .write(offset: 0, length: 1536, flags: []),
        ])
      let content = try await node.read(at: 0, count: 1536)
      #expect(content[..<100] == pattern(512)[..<100])
      #expect(content[100...].allSatisfy { $0 == 0 })
    }

    @Test("a detected zero-write is cut at maxPwriteZeroes, not at maxTransfer")
    func detectedZeroWriteLimits() async throws {
      let (node, driver) = try await node(
        detect: .on, limits: limits(maxTransfer: 64 * kib, maxPwriteZeroes: 128 * kib))
      try await node.write(at: 0, bytes: zeroes(256 * kib))
      #expect(
        driver.ioCalls == [
          .writeZeroes(offset: 0, length: 128 * kib, flags: []),
          .writeZeroes(offset: 128 * kib, length: 128 * kib, flags: []),
        ])
    }

    @Test("FUA on a detected zero-write to a driver without zero-write FUA: one flush after")
    func detectedZeroWriteWithFUA() async throws {
      let (node, driver) = try await node(detect: .on)
      try await node.write(at: 0, bytes: zeroes(64 * kib), flags: .fua)
      #expect(
        driver.ioCalls == [
          .writeZeroes(offset: 0, length: 64 * kib, flags: []), .flushToOS, .flushToDisk,
        ])
    }
  }
}
