import BlockCore
import BlockDrivers
import BlockTestSupport
import Testing

extension EngineTests {
  /// Flushes, as QEMU 7.2's `bdrv_co_flush` runs them: flush-to-OS always,
  /// flush-to-disk only when something was written since the last successful
  /// flush and never under cache=unsafe, one flush at a time per node, then the
  /// children the node writes through; FUA emulated by a flush.
  @Suite("Flush")
  @BlockActor
  struct FlushTests {
    @Test("flush-to-OS always; flush-to-disk only when written since the last flush")
    func generations() async throws {
      let (node, driver) = try await makeRecordingNode(size: 1 * mib)
      try await node.flush()
      #expect(driver.ioCalls == [.flushToOS])  // nothing written since open

      driver.reset()
      try await node.write(at: 0, bytes: pattern(4 * kib))
      try await node.flush()
      #expect(
        driver.ioCalls == [.write(offset: 0, length: 4 * kib, flags: []), .flushToOS, .flushToDisk])

      driver.reset()
      _ = try await node.read(at: 0, count: Int(4 * kib))
      try await node.flush()
      #expect(driver.ioCalls == [.read(offset: 0, length: 4 * kib), .flushToOS])
    }

    @Test("zero-writes and discards count as writes; an ignored discard does not")
    func zeroWritesAndDiscardsAreWrites() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, capabilities: recordingCapabilities { $0.canWriteZeroes = true },
        options: NodeOptions(discard: .unmap))
      try await node.writeZeroes(at: 0, count: 4 * kib)
      try await node.flush()
      try await node.discard(at: 0, count: 4 * kib)
      try await node.flush()
      #expect(
        driver.ioCalls == [
          .writeZeroes(offset: 0, length: 4 * kib, flags: []), .flushToOS, .flushToDisk,
          .discard(offset: 0, length: 4 * kib), .flushToOS, .flushToDisk,
        ])

      let (ignoring, ignoringDriver) = try await makeRecordingNode(size: 1 * mib)
      try await ignoring.discard(at: 0, count: 4 * kib)
      try await ignoring.flush()
      #expect(ignoringDriver.ioCalls == [.flushToOS])
    }

    @Test("cache=unsafe: flush-to-OS only, even after writes")
    func cacheUnsafe() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, options: NodeOptions(cache: .unsafe))
      try await node.write(at: 0, bytes: pattern(4 * kib))
      try await node.flush()
      #expect(driver.ioCalls == [.write(offset: 0, length: 4 * kib, flags: []), .flushToOS])
    }

    @Test("a read-only node's flush reaches no driver")
    func readOnly() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, options: NodeOptions(readOnly: true))
      try await node.flush()
      #expect(driver.calls.isEmpty)
    }

    @Test("a failed flush-to-disk is tried again by the next flush")
    func failedFlushIsRetried() async throws {
      let (node, driver) = try await makeRecordingNode(size: 1 * mib)
      try await node.write(at: 0, bytes: pattern(4 * kib))
      failCalls(on: driver, with: BlockError(.ioError, "injected")) { $0 == .flushToDisk }
      let error = await #expect(throws: BlockError.self) { try await node.flush() }
      #expect(error?.code == .ioError)

      driver.interceptor = nil
      try await node.flush()
      #expect(
        driver.ioCalls == [
          .write(offset: 0, length: 4 * kib, flags: []), .flushToOS, .flushToDisk, .flushToOS,
          .flushToDisk,
        ])
    }

    @Test("one flush at a time: later flushes wait for the active one, then run in turn")
    func flushesQueue() async throws {
      let (node, driver) = try await makeRecordingNode(size: 1 * mib)
      let holder = CallHolder { $0 == .flushToDisk }
      holder.install(on: driver)
      try await node.write(at: 0, bytes: pattern(4 * kib))
      let first = Task { @BlockActor in try await node.flush() }
      await holder.gate.waitForHeld(1)

      // Written while the first flush is at the disk: a later flush must cover it.
      try await node.write(at: 4 * kib, bytes: pattern(4 * kib))
      let second = Task { @BlockActor in try await node.flush() }
      let third = Task { @BlockActor in try await node.flush() }
      try await waitUntil("the second and third flush are in flight") { node.inFlight == 3 }
      let beforeRelease: [DriverCall] = [
        .write(offset: 0, length: 4 * kib, flags: []), .flushToOS, .flushToDisk,
        .write(offset: 4 * kib, length: 4 * kib, flags: []),
      ]
      #expect(driver.ioCalls == beforeRelease)  // queued, not at the driver

      holder.gate.releaseAll()
      try await first.value
      try await second.value
      try await third.value
      // The second flush covers the second write; the third finds nothing new.
      #expect(driver.ioCalls == beforeRelease + [.flushToOS, .flushToDisk, .flushToOS])
    }

    @Test("children written through are flushed after the parent; a backing child is not")
    func childrenAfterParent() async throws {
      let (file, fileDriver) = try await makeRecordingNode(size: 1 * mib, name: "file")
      let (backing, backingDriver) = try await makeRecordingNode(size: 1 * mib, name: "backing")
      let parentDriver = RecordingDriver(size: 1 * mib)
      let parent = BlockNode(name: "parent", driver: parentDriver)
      parent.attach(file, role: .file, writable: true)
      parent.attach(backing, role: .backing)
      try await parent.open()
      // Something to flush on every node.
      try await parent.write(at: 0, bytes: pattern(4 * kib))
      try await file.write(at: 0, bytes: pattern(4 * kib))
      try await backing.write(at: 0, bytes: pattern(4 * kib))

      let log = EventLog()
      let drivers = [("parent", parentDriver), ("file", fileDriver), ("backing", backingDriver)]
      for (name, driver) in drivers {
        driver.interceptor = { call in log.append("\(name) \(call)") }
      }
      try await parent.flush()
      #expect(
        log.events == [
          "parent flushToOS", "parent flushToDisk", "file flushToOS", "file flushToDisk",
        ])
    }

    @Test("a writethrough backend adds FUA: a driver without FUA gets a flush after each write")
    func writethroughEmulatesFUA() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, options: NodeOptions(cache: .writethrough))
      let backend = BlockBackend(root: node)
      #expect(!backend.writeCacheEnabled)
      try await backend.write(at: 0, from: vector(pattern(4 * kib)))
      try await backend.write(at: 8 * kib, from: vector(pattern(4 * kib)))
      #expect(
        driver.ioCalls == [
          .write(offset: 0, length: 4 * kib, flags: []), .flushToOS, .flushToDisk,
          .write(offset: 8 * kib, length: 4 * kib, flags: []), .flushToOS, .flushToDisk,
        ])
    }

    @Test("writethrough: a write cut at maxTransfer gets one flush after the last fragment")
    func writethroughFragmented() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, limits: limits(maxTransfer: 4 * kib),
        options: NodeOptions(cache: .writethrough))
      let backend = BlockBackend(root: node)
      try await backend.write(at: 0, from: vector(pattern(12 * kib)))
      #expect(
        driver.ioCalls == [
          .write(offset: 0, length: 4 * kib, flags: []),
          .write(offset: 4 * kib, length: 4 * kib, flags: []),
          .write(offset: 8 * kib, length: 4 * kib, flags: []),
          .flushToOS, .flushToDisk,
        ])
    }

    @Test("writethrough: a driver with FUA gets FUA on every write and no flush")
    func writethroughWithDriverFUA() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, capabilities: recordingCapabilities { $0.supportedWriteFlags = .fua },
        limits: limits(maxTransfer: 4 * kib), options: NodeOptions(cache: .writethrough))
      let backend = BlockBackend(root: node)
      try await backend.write(at: 0, from: vector(pattern(8 * kib)))
      #expect(
        driver.ioCalls == [
          .write(offset: 0, length: 4 * kib, flags: .fua),
          .write(offset: 4 * kib, length: 4 * kib, flags: .fua),
        ])
    }

    @Test("writethrough zero-writes get one flush; writeback writes get none")
    func writethroughZeroWritesAndWriteback() async throws {
      let (node, driver) = try await makeRecordingNode(
        size: 1 * mib, capabilities: recordingCapabilities { $0.canWriteZeroes = true },
        options: NodeOptions(cache: .writethrough))
      try await BlockBackend(root: node).writeZeroes(at: 0, count: 64 * kib)
      #expect(
        driver.ioCalls == [
          .writeZeroes(offset: 0, length: 64 * kib, flags: []), .flushToOS, .flushToDisk,
        ])

      let (cached, cachedDriver) = try await makeRecordingNode(size: 1 * mib)
      let backend = BlockBackend(root: cached)
      #expect(backend.writeCacheEnabled)
      try await backend.write(at: 0, from: vector(pattern(4 * kib)))
      #expect(cachedDriver.ioCalls == [.write(offset: 0, length: 4 * kib, flags: [])])
    }
  }
}
