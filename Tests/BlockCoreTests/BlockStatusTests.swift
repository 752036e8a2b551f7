import BlockCore
import BlockDrivers
import BlockTestSupport
import Testing

extension EngineTests {
  /// Block status at byte granularity, as QEMU 7.2's `bdrv_co_block_status`,
  /// `bdrv_co_common_block_status_above`, `bdrv_is_allocated_above` and
  /// `bdrv_make_zero` report it: DATA / ZERO / OFFSET_VALID / ALLOCATED / EOF
  /// with the host offset and the node holding the data, unallocated ranges
  /// reading as zero without a backing node (or past a shorter backing node's
  /// end), backing chains walked with the depth of the answering layer.
  @Suite("Block status")
  @BlockActor
  struct BlockStatusTests {
    @Test("data, holes and EOF at byte granularity, with the host offset and node")
    func byteGranularity() async throws {
      let size = 64 * kib
      let (node, driver) = try await makeRecordingNode(size: size)
      driver.memory.populate(at: 1000, bytes: pattern(100))

      let hole = try await node.blockStatus(offset: 0, bytes: size, wantZero: true)
      #expect(hole.flags == .zero)  // unallocated, no backing node: reads as zero
      #expect(hole.count == 1000)

      let data = try await node.blockStatus(offset: 1000, bytes: size, wantZero: true)
      #expect(data.flags == [.data, .offsetValid, .allocated])
      #expect(data.count == 100)
      #expect(data.mapOffset == 1000)
      #expect(data.file === node)

      let inside = try await node.blockStatus(offset: 1050, bytes: 10, wantZero: true)
      #expect(inside.flags == [.data, .offsetValid, .allocated])
      #expect(inside.count == 10)
      #expect(inside.mapOffset == 1050)

      let tail = try await node.blockStatus(offset: 1100, bytes: size, wantZero: true)
      #expect(tail.flags == [.zero, .eof])
      #expect(tail.count == size - 1100)

      let past = try await node.blockStatus(offset: size, bytes: 1, wantZero: true)
      #expect(past.flags == .eof)
      #expect(past.count == 0)

      // Each query reaches the driver clipped to the end of the node; the one
      // past the end does not reach it.
      #expect(
        driver.calls == [
          .blockStatus(offset: 0, length: size),
          .blockStatus(offset: 1000, length: size - 1000),
          .blockStatus(offset: 1050, length: 10),
          .blockStatus(offset: 1100, length: size - 1100),
        ])
    }

    @Test("zero-written ranges are ZERO and ALLOCATED; unmapped ones are holes")
    func zeroWrittenRanges() async throws {
      let (node, _) = try await makeRecordingNode(
        size: 1 * mib,
        capabilities: recordingCapabilities {
          $0.canWriteZeroes = true
          $0.supportedZeroFlags = .mayUnmap
        },
        options: NodeOptions(discard: .unmap))
      try await node.writeZeroes(at: 0, count: 64 * kib)
      try await node.writeZeroes(at: 64 * kib, count: 64 * kib, flags: .mayUnmap)
      let written = try await node.blockStatus(offset: 0, bytes: 1 * mib, wantZero: true)
      #expect(written.flags == [.zero, .allocated])
      #expect(written.count == 64 * kib)
      let unmapped = try await node.blockStatus(offset: 64 * kib, bytes: 64 * kib, wantZero: true)
      #expect(unmapped.flags == .zero)
      #expect(unmapped.count == 64 * kib)
    }

    @Test("unallocated ranges read as zero without a backing node")
    func unallocatedReadsZero() async throws {
      let (node, driver) = try await makeRecordingNode(size: 64 * kib)
      driver.memory.populate(at: 0, bytes: pattern(4 * kib))
      #expect(try await node.read(at: 8 * kib, count: Int(4 * kib)) == zeroes(4 * kib))
      #expect(driver.ioCalls == [.read(offset: 8 * kib, length: 4 * kib)])
      let status = try await node.blockStatus(offset: 8 * kib, bytes: 8 * kib, wantZero: true)
      #expect(status.flags == .zero)
      #expect(status.count == 8 * kib)
    }

    @Test("a driver without backing semantics does not call its holes zero")
    func holesWithoutBackingSemantics() async throws {
      let (node, _) = try await makeRecordingNode(
        size: 64 * kib, capabilities: recordingCapabilities { $0.supportsBacking = false })
      let status = try await node.blockStatus(offset: 0, bytes: 8 * kib, wantZero: true)
      #expect(status.flags == [])
      #expect(status.count == 8 * kib)
    }

    @Test("an unallocated range over a backing node reads the backing data")
    func backingData() async throws {
      let (base, baseDriver) = try await makeRecordingNode(size: 64 * kib, name: "base")
      baseDriver.memory.populate(at: 0, bytes: pattern(64 * kib))
      let (top, topDriver) = try await makeRecordingNode(size: 64 * kib, backing: base, name: "top")

      #expect(try await top.read(at: 0, count: Int(4 * kib)) == Array(pattern(64 * kib)[..<4096]))
      #expect(topDriver.ioCalls == [.read(offset: 0, length: 4 * kib)])
      #expect(baseDriver.ioCalls == [.read(offset: 0, length: 4 * kib)])

      let own = try await top.blockStatus(offset: 0, bytes: 4 * kib, wantZero: true)
      #expect(own.flags == [])  // neither allocated here nor known to be zero
      let (status, depth) = try await top.blockStatusAbove(
        base: nil, offset: 0, bytes: 4 * kib, wantZero: true)
      #expect(depth == 2)
      #expect(status.flags == [.data, .offsetValid, .allocated])
      #expect(status.file === base)
      #expect(status.mapOffset == 0)
    }

    @Test("past the end of a shorter backing node the overlay reads zeroes")
    func shorterBacking() async throws {
      let (base, baseDriver) = try await makeRecordingNode(size: 64 * kib, name: "base")
      baseDriver.memory.populate(at: 0, bytes: pattern(64 * kib))
      let (top, topDriver) = try await makeRecordingNode(
        size: 128 * kib, backing: base, name: "top")

      // Straddling the backing node's end: its part up to the end is read, the
      // rest is zero-filled without a driver call.
      let straddling = try await top.read(at: 32 * kib, count: Int(64 * kib))
      #expect(straddling[..<Int(32 * kib)] == pattern(64 * kib)[Int(32 * kib)...])
      #expect(straddling[Int(32 * kib)...].allSatisfy { $0 == 0 })
      #expect(topDriver.ioCalls == [.read(offset: 32 * kib, length: 64 * kib)])
      #expect(baseDriver.ioCalls == [.read(offset: 32 * kib, length: 32 * kib)])

      topDriver.reset()
      baseDriver.reset()
      #expect(try await top.read(at: 64 * kib, count: Int(64 * kib)) == zeroes(64 * kib))
      #expect(topDriver.ioCalls == [.read(offset: 64 * kib, length: 64 * kib)])
      #expect(baseDriver.ioCalls.isEmpty)

      // Known to be zero only when the caller asks for zeroes.
      let zero = try await top.blockStatus(offset: 64 * kib, bytes: 64 * kib, wantZero: true)
      #expect(zero.flags == [.zero, .eof])
      #expect(zero.count == 64 * kib)
      let allocation = try await top.blockStatus(
        offset: 64 * kib, bytes: 64 * kib, wantZero: false)
      #expect(allocation.flags == .eof)

      // Through the chain, the short layer's zeroes count as allocated there.
      let (status, depth) = try await top.blockStatusAbove(
        base: nil, offset: 64 * kib, bytes: 64 * kib, wantZero: true)
      #expect(depth == 2)
      #expect(status.flags == [.zero, .allocated, .eof])
      #expect(status.count == 64 * kib)
      #expect(status.file === base)
      let allocated = try await top.isAllocatedAbove(base: nil, offset: 64 * kib, bytes: 64 * kib)
      #expect(allocated.depth == 2)
      #expect(allocated.count == 64 * kib)
    }

    /// base (memory) ← mid (recording) ← top (recording), 256 KiB each, with
    /// data in [0, 64K) of base, [64K, 128K) of mid and [128K, 192K) of top.
    private func threeDeepChain() async throws -> (base: BlockNode, mid: BlockNode, top: BlockNode)
    {
      let size = 256 * kib
      let memory = MemoryDriver(size: size)
      let base = BlockNode(name: "base", driver: memory)
      try await base.open()
      memory.populate(at: 0, bytes: pattern(64 * kib, seed: 1))
      let (mid, midDriver) = try await makeRecordingNode(size: size, backing: base, name: "mid")
      midDriver.memory.populate(at: 64 * kib, bytes: pattern(64 * kib, seed: 2))
      let (top, topDriver) = try await makeRecordingNode(size: size, backing: mid, name: "top")
      topDriver.memory.populate(at: 128 * kib, bytes: pattern(64 * kib, seed: 3))
      return (base, mid, top)
    }

    @Test("through a three-deep chain: the layer that answers, at depth 1, 2, 3 or nowhere")
    func threeDeep() async throws {
      let (base, mid, top) = try await threeDeepChain()
      let owners: [(depth: Int, node: BlockNode?)] = [(3, base), (2, mid), (1, top), (0, nil)]
      for (index, owner) in owners.enumerated() {
        let offset = Int64(index) * 64 * kib
        let (status, depth) = try await top.blockStatusAbove(
          base: nil, offset: offset, bytes: 64 * kib, wantZero: true)
        #expect(status.count == 64 * kib)
        let allocated = try await top.isAllocatedAbove(base: nil, offset: offset, bytes: 64 * kib)
        #expect(allocated.depth == owner.depth)
        #expect(allocated.count == 64 * kib)
        if let node = owner.node {
          #expect(depth == owner.depth)
          #expect(status.flags == [.data, .offsetValid, .allocated])
          #expect(status.file === node)
          #expect(status.mapOffset == offset)
        } else {
          // Nowhere in the chain: the bottom has no backing node, so zero.
          #expect(depth == 3)
          #expect(status.flags == [.zero, .eof])
        }
        // The data read through the chain is the owner's.
        let seed = 4 - owner.depth
        let expected = owner.node == nil ? zeroes(64 * kib) : pattern(64 * kib, seed: seed)
        #expect(try await top.read(at: offset, count: Int(64 * kib)) == expected)
      }
    }

    @Test("isAllocatedAbove stops at the base, and includes it only when asked")
    func isAllocatedAboveBase() async throws {
      let (base, mid, top) = try await threeDeepChain()
      // Above mid only top counts: its first 128 KiB are not allocated.
      let aboveMid = try await top.isAllocatedAbove(base: mid, offset: 0, bytes: 256 * kib)
      #expect(aboveMid.depth == 0)
      #expect(aboveMid.count == 128 * kib)
      // Including mid, the answer is limited to mid's first unallocated 64 KiB.
      let withMid = try await top.isAllocatedAbove(
        base: mid, includeBase: true, offset: 0, bytes: 256 * kib)
      #expect(withMid.depth == 0)
      #expect(withMid.count == 64 * kib)
      let midData = try await top.isAllocatedAbove(
        base: mid, includeBase: true, offset: 64 * kib, bytes: 64 * kib)
      #expect(midData.depth == 2)
      // Above base, base's data is not found.
      let aboveBase = try await top.isAllocatedAbove(base: base, offset: 0, bytes: 64 * kib)
      #expect(aboveBase.depth == 0)
      #expect(aboveBase.count == 64 * kib)
      // A node is not above itself.
      let (itself, depth) = try await top.blockStatusAbove(
        base: top, offset: 128 * kib, bytes: 64 * kib, wantZero: true)
      #expect(depth == 0)
      #expect(itself.flags == [])
    }

    @Test("makeZero zero-writes exactly where status is not already ZERO")
    func makeZero() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, capabilities: recordingCapabilities { $0.canWriteZeroes = true })
      driver.memory.populate(at: 64 * kib, bytes: pattern(64 * kib))
      driver.memory.populate(at: 512 * kib, bytes: pattern(8 * kib))
      try await node.writeZeroes(at: 256 * kib, count: 64 * kib)  // allocated zeroes
      driver.reset()
      try await node.makeZero()
      #expect(
        driver.ioCalls == [
          .writeZeroes(offset: 64 * kib, length: 64 * kib, flags: []),
          .writeZeroes(offset: 512 * kib, length: 8 * kib, flags: []),
        ])
      #expect(try await node.read(at: 0, count: Int(1 * mib)) == zeroes(1 * mib))
    }

    @Test("makeZero over a backing node also zero-writes the unallocated ranges")
    func makeZeroOverBacking() async throws {
      let (base, baseDriver) = try await makeRecordingNode(size: 1 * mib, name: "base")
      baseDriver.memory.populate(at: 0, bytes: pattern(1 * mib))
      let (top, topDriver) = try await makeRecordingNode(
        size: 1 * mib, capabilities: recordingCapabilities { $0.canWriteZeroes = true },
        backing: base, name: "top")
      topDriver.memory.populate(at: 64 * kib, bytes: pattern(64 * kib))
      try await top.makeZero()
      #expect(
        topDriver.ioCalls == [
          .writeZeroes(offset: 0, length: 64 * kib, flags: []),
          .writeZeroes(offset: 64 * kib, length: 64 * kib, flags: []),
          .writeZeroes(offset: 128 * kib, length: 1 * mib - 128 * kib, flags: []),
        ])
      #expect(try await top.read(at: 0, count: Int(1 * mib)) == zeroes(1 * mib))
    }

    @Test("makeZero passes MAY_UNMAP when the node unmaps")
    func makeZeroMayUnmap() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib,
        capabilities: recordingCapabilities {
          $0.canWriteZeroes = true
          $0.supportedZeroFlags = .mayUnmap
        },
        options: NodeOptions(discard: .unmap))
      driver.memory.populate(at: 64 * kib, bytes: pattern(64 * kib))
      try await node.makeZero(flags: .mayUnmap)
      #expect(
        driver.ioCalls == [.writeZeroes(offset: 64 * kib, length: 64 * kib, flags: .mayUnmap)])
    }

    @Test("an unaligned query is aligned for the driver and the answer trimmed back")
    func unalignedQuery() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 64 * kib, capabilities: recordingCapabilities { $0.byteGranular = false })
      #expect(node.limits.requestAlignment == 512)
      driver.memory.populate(at: 0, bytes: pattern(1024))

      let short = try await node.blockStatus(offset: 100, bytes: 300, wantZero: true)
      #expect(short.flags == [.data, .offsetValid, .allocated])
      #expect(short.count == 300)
      #expect(short.mapOffset == 100)

      // The driver answers for [512, 1024); the caller gets [600, 1024).
      let long = try await node.blockStatus(offset: 600, bytes: 4000, wantZero: true)
      #expect(long.flags == [.data, .offsetValid, .allocated])
      #expect(long.count == 1024 - 600)
      #expect(long.mapOffset == 600)
      #expect(long.file === node)

      #expect(
        driver.calls == [
          .blockStatus(offset: 0, length: 512),
          .blockStatus(offset: 512, length: 4608 - 512),  // [600, 4600) rounded out
        ])
    }

    @Test("without driver block status: a protocol node is all data at its own offsets")
    func withoutDriverBlockStatus() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 64 * kib, capabilities: DriverCapabilities(kind: .protocolDriver))
      let middle = try await node.blockStatus(offset: 4 * kib, bytes: 8 * kib, wantZero: true)
      #expect(middle.flags == [.data, .offsetValid, .allocated])
      #expect(middle.count == 8 * kib)
      #expect(middle.mapOffset == 4 * kib)
      #expect(middle.file === node)
      let end = try await node.blockStatus(offset: 60 * kib, bytes: 8 * kib, wantZero: true)
      #expect(end.flags == [.data, .offsetValid, .allocated, .eof])
      #expect(end.count == 4 * kib)
      #expect(driver.calls.isEmpty)

      let (format, _) = try await makeRecordingNode(
        size: 64 * kib, capabilities: DriverCapabilities(kind: .format))
      let formatStatus = try await format.blockStatus(offset: 0, bytes: 8 * kib, wantZero: true)
      #expect(formatStatus.flags == [.data, .allocated])
    }

    @Test("a filter defers to its file child (RAW)")
    func filterDefersToFile() async throws {
      let (file, fileDriver) = try await makeRecordingNode(size: 64 * kib, name: "file")
      fileDriver.memory.populate(at: 0, bytes: pattern(4 * kib))
      let filter = try await makeMappingNode(over: file, kind: .filter)

      let data = try await filter.blockStatus(offset: 1000, bytes: 64 * kib, wantZero: true)
      #expect(data.flags == [.data, .offsetValid, .allocated])
      #expect(data.count == 4 * kib - 1000)
      #expect(data.mapOffset == 1000)
      #expect(data.file === file)

      let hole = try await filter.blockStatus(offset: 4 * kib, bytes: 64 * kib, wantZero: true)
      #expect(hole.flags == [.zero, .eof])
      #expect(hole.count == 60 * kib)
    }

    // A format answering DATA | OFFSET_VALID | RECURSE makes the engine ask the
    // file (with want_zero) whether the mapped range is a hole. QEMU 7.2:
    //   if (ret2 & BDRV_BLOCK_EOF && (!file_pnum || ret2 & BDRV_BLOCK_ZERO))
    //       ret |= BDRV_BLOCK_ZERO;           /* whole pnum */
    //   else { *pnum = file_pnum; ret |= (ret2 & BDRV_BLOCK_ZERO); }

    /// A mapping format of `length` over a 64 KiB file whose first 16 KiB are
    /// data and the rest a hole.
    private func formatOverHoleyFile(length: Int64? = nil) async throws -> BlockNode {
      let (file, fileDriver) = try await makeRecordingNode(size: 64 * kib, name: "file")
      fileDriver.memory.populate(at: 0, bytes: pattern(16 * kib))
      return try await makeMappingNode(over: file, kind: .format, length: length)
    }

    @Test("RECURSE: a hole in the file up to its end reads as zero")
    func recurseHoleToEndOfFile() async throws {
      let format = try await formatOverHoleyFile()
      let status = try await format.blockStatus(offset: 16 * kib, bytes: 48 * kib, wantZero: true)
      #expect(status.flags == [.data, .zero, .offsetValid, .allocated, .eof])
      #expect(status.count == 48 * kib)
      #expect(status.mapOffset == 16 * kib)
    }

    @Test("RECURSE: beyond the end of the file reads as zero")
    func recurseBeyondEndOfFile() async throws {
      let format = try await formatOverHoleyFile(length: 128 * kib)
      let status = try await format.blockStatus(offset: 64 * kib, bytes: 64 * kib, wantZero: true)
      #expect(status.flags == [.data, .zero, .offsetValid, .allocated, .eof])
      #expect(status.count == 64 * kib)
    }

    @Test("RECURSE: without wantZero the file is not asked")
    func recurseOnlyForWantZero() async throws {
      let format = try await formatOverHoleyFile()
      let status = try await format.blockStatus(offset: 0, bytes: 64 * kib, wantZero: false)
      #expect(status.flags == [.data, .offsetValid, .allocated, .eof])
      #expect(status.count == 64 * kib)
    }

    @Test("RECURSE: file data before a hole limits the answer to the data")
    func recurseLimitedToFileData() async throws {
      let format = try await formatOverHoleyFile()
      let status = try await format.blockStatus(offset: 0, bytes: 64 * kib, wantZero: true)
      #expect(status.count == 16 * kib)
      #expect(status.flags == [.data, .offsetValid, .allocated])  // not to EOF

    }

    @Test("RECURSE: a hole in the file up to its end covers the format's whole answer")
    func recurseHoleToEndCoversFormatRange() async throws {
      let format = try await formatOverHoleyFile(length: 128 * kib)
      let status = try await format.blockStatus(offset: 16 * kib, bytes: 112 * kib, wantZero: true)
      #expect(status.flags.contains(.zero))
      #expect(status.count == 112 * kib)
      #expect(status.flags == [.data, .zero, .offsetValid, .allocated, .eof])

    }

    @Test("RECURSE: file data that reaches the file's end limits the answer to it")
    func recurseDataToEndOfFile() async throws {
      let (file, fileDriver) = try await makeRecordingNode(size: 64 * kib, name: "file")
      fileDriver.memory.populate(at: 0, bytes: pattern(64 * kib))
      let format = try await makeMappingNode(over: file, kind: .format, length: 128 * kib)
      let status = try await format.blockStatus(offset: 32 * kib, bytes: 96 * kib, wantZero: true)
      #expect(!status.flags.contains(.zero))
      #expect(status.count == 32 * kib)
      #expect(status.flags == [.data, .offsetValid, .allocated])  // not to the format's EOF

    }
  }
}
