import BlockCore
import BlockDrivers
import BlockTestSupport
import Testing

extension EngineTests {
  /// What the engine does around the data path: dirty bitmaps marked by
  /// completed writes, zero-writes and discards; before-write hooks that may
  /// veto a request; plug/unplug batching hints through the subtree (QEMU 7.2's
  /// `bdrv_io_plug` / `bdrv_io_unplug`); vmstate passed down to the file child
  /// (`bdrv_co_readv_vmstate` / `bdrv_co_writev_vmstate`); and writeSync as a
  /// write-then-flush barrier (`bdrv_co_pwrite_sync`).
  @Suite("Dirty tracking, hooks, plug/unplug, vmstate, writeSync")
  @BlockActor
  struct DirtyTrackingTests {
    private func makeNode(
      size: Int64 = 1 * mib, discard: DiscardMode = .unmap
    ) async throws -> (BlockNode, RecordingDriver) {
      try await makeRecordingNode(
        size: size, capabilities: recordingCapabilities { $0.canWriteZeroes = true },
        options: NodeOptions(discard: discard))
    }

    // MARK: Dirty bitmaps

    @Test("a completed write marks every chunk it touches, in every bitmap")
    func writesMark() async throws {
      let (node, _) = try await makeNode()
      let coarse = node.addDirtyBitmap(name: "coarse", granularity: 64 * kib)
      let fine = node.addDirtyBitmap(name: "fine", granularity: 4 * kib)
      try await node.write(at: 60 * kib, bytes: pattern(8 * kib))  // across a 64 KiB boundary
      #expect(coarse.dirtyRanges == [0..<128 * kib])
      #expect(fine.dirtyRanges == [60 * kib..<68 * kib])

      try await node.write(at: 512 * kib + 100, bytes: pattern(100))
      #expect(coarse.dirtyRanges == [0..<128 * kib, 512 * kib..<576 * kib])
      #expect(fine.dirtyRanges == [60 * kib..<68 * kib, 512 * kib..<516 * kib])
      #expect(fine.isDirty(512 * kib + 4095))
      #expect(!fine.isDirty(516 * kib))
    }

    @Test("zero-writes and discards mark bitmaps; an ignored discard does not")
    func zeroWritesAndDiscardsMark() async throws {
      let (node, _) = try await makeNode()
      let bitmap = node.addDirtyBitmap(name: "b", granularity: 4 * kib)
      try await node.writeZeroes(at: 0, count: 8 * kib)
      try await node.discard(at: 64 * kib, count: 4 * kib)
      #expect(bitmap.dirtyRanges == [0..<8 * kib, 64 * kib..<68 * kib])

      let (ignoring, _) = try await makeNode(discard: .ignore)
      let untouched = ignoring.addDirtyBitmap(name: "b", granularity: 4 * kib)
      try await ignoring.discard(at: 0, count: 64 * kib)
      #expect(untouched.dirtyRanges.isEmpty)
    }

    @Test("failed writes, zero-writes and discards mark nothing")
    func failuresDoNotMark() async throws {
      let (node, driver) = try await makeNode()
      let bitmap = node.addDirtyBitmap(name: "b", granularity: 4 * kib)
      failCalls(on: driver, with: BlockError(.ioError, "injected")) { _ in true }
      for operation in Operation.allCases {
        let error = await #expect(throws: BlockError.self) {
          try await operation.run(on: node, at: operation.offset)
        }
        #expect(error?.code == .ioError)
      }
      #expect(driver.ioCalls == Operation.allCases.map(\.driverCall))  // each was tried
      #expect(bitmap.dirtyRanges.isEmpty)
    }

    @Test("a disabled or removed bitmap is not marked")
    func disabledAndRemovedBitmaps() async throws {
      let (node, _) = try await makeNode()
      let disabled = node.addDirtyBitmap(name: "disabled", granularity: 4 * kib)
      let removed = node.addDirtyBitmap(name: "removed", granularity: 4 * kib)
      disabled.isEnabled = false
      node.removeDirtyBitmap(removed)
      try await node.write(at: 0, bytes: pattern(4 * kib))
      #expect(disabled.dirtyRanges.isEmpty)
      #expect(removed.dirtyRanges.isEmpty)
      #expect(node.dirtyBitmaps.map(\.name) == ["disabled"])

      disabled.isEnabled = true
      try await node.write(at: 8 * kib, bytes: pattern(4 * kib))
      #expect(disabled.dirtyRanges == [8 * kib..<12 * kib])
    }

    // MARK: Before-write hooks

    /// The requests a hook sees, each 4 KiB at its own offset.
    enum Operation: String, CaseIterable, Sendable {
      case write, zeroWrite, discard

      var offset: Int64 {
        switch self {
        case .write: 0
        case .zeroWrite: 8 * kib
        case .discard: 16 * kib
        }
      }

      var driverCall: DriverCall {
        switch self {
        case .write: .write(offset: offset, length: 4 * kib, flags: [])
        case .zeroWrite: .writeZeroes(offset: offset, length: 4 * kib, flags: [])
        case .discard: .discard(offset: offset, length: 4 * kib)
        }
      }

      @BlockActor
      func run(on node: BlockNode, at offset: Int64) async throws {
        switch self {
        case .write: try await node.write(at: offset, bytes: pattern(4 * kib))
        case .zeroWrite: try await node.writeZeroes(at: offset, count: 4 * kib)
        case .discard: try await node.discard(at: offset, count: 4 * kib)
        }
      }
    }

    @Test(
      "a before-write hook that throws fails the request and nothing reaches the driver",
      arguments: Operation.allCases)
    func hookVeto(_ operation: Operation) async throws {
      let (node, driver) = try await makeNode()
      let bitmap = node.addDirtyBitmap(name: "b", granularity: 4 * kib)
      node.addBeforeWriteHook { _, _, _, _ in throw BlockError(.permissionDenied, "vetoed") }
      let error = await #expect(throws: BlockError.self) {
        try await operation.run(on: node, at: operation.offset)
      }
      #expect(error?.code == .permissionDenied)
      #expect(driver.calls.isEmpty)
      #expect(bitmap.dirtyRanges.isEmpty)
    }

    @Test("a hook sees each write, zero-write and discard until it is removed")
    func hookSeesRequests() async throws {
      let (node, driver) = try await makeNode()
      let log = EventLog()
      let token = node.addBeforeWriteHook { hooked, offset, bytes, kind in
        log.append("\(hooked.name) \(kind) \(offset)+\(bytes)")
      }
      for operation in Operation.allCases {
        try await operation.run(on: node, at: operation.offset)
      }
      #expect(
        log.events == [
          "recording write 0+4096", "recording write 8192+4096", "recording discard 16384+4096",
        ])
      #expect(driver.ioCalls == Operation.allCases.map(\.driverCall))

      node.removeBeforeWriteHook(token)
      try await node.write(at: 32 * kib, bytes: pattern(4 * kib))
      #expect(log.events.count == 3)
    }

    // MARK: plug / unplug

    /// parent ─file─► file, both logging to `log`.
    private func pluggable(_ log: EventLog) async throws -> BlockNode {
      let file = BlockNode(name: "file", driver: EventDriver(name: "file", log: log))
      try await file.open()
      let parent = BlockNode(name: "parent", driver: EventDriver(name: "parent", log: log))
      parent.attach(file, role: .file)
      try await parent.open()
      return parent
    }

    @Test("plug and unplug reach the node and every child once per pair")
    func plugReachesSubtree() async throws {
      let log = EventLog()
      let parent = try await pluggable(log)
      parent.plug()
      #expect(log.events.sorted() == ["file.plug", "parent.plug"])
      parent.unplug()
      #expect(log.events.count == 4)
      #expect(log.events.suffix(2).sorted() == ["file.unplug", "parent.unplug"])
    }

    @Test("children are plugged before their parent and unplugged after it")
    func plugOrder() async throws {
      let log = EventLog()
      let parent = try await pluggable(log)
      parent.plug()
      parent.unplug()
      #expect(log.events == ["file.plug", "parent.plug", "parent.unplug", "file.unplug"])

    }

    @Test("nested plug/unplug pairs reach the drivers only at the outermost pair")
    func nestedPlug() async throws {
      let log = EventLog()
      let parent = try await pluggable(log)
      parent.plug()
      parent.plug()
      let plugged = log.events.sorted()
      parent.unplug()
      let afterInnerUnplug = log.events.sorted()
      parent.unplug()
      let afterOuterUnplug = log.events.sorted()
      #expect(plugged == ["file.plug", "parent.plug"])
      #expect(afterInnerUnplug == plugged)
      #expect(afterOuterUnplug == ["file.plug", "file.unplug", "parent.plug", "parent.unplug"])

    }

    // MARK: vmstate

    /// parent ─file─► file; only `file` has a VM state area unless `parentArea`.
    private func vmstateGraph(_ log: EventLog, parentArea: Bool = false) async throws -> BlockNode {
      let file = BlockNode(
        name: "file", driver: EventDriver(name: "file", log: log, vmstateArea: zeroes(64 * kib)))
      try await file.open()
      let parent = BlockNode(
        name: "parent",
        driver: EventDriver(
          name: "parent", log: log, vmstateArea: parentArea ? zeroes(64 * kib) : nil))
      parent.attach(file, role: .file)
      try await parent.open()
      return parent
    }

    @Test("vmstate goes to the file child when the node's driver has no VM state area")
    func vmstateToFileChild() async throws {
      let log = EventLog()
      let parent = try await vmstateGraph(log)
      let saved = pattern(512)
      try await parent.vmstate(at: 4096, iov: vector(saved), isLoad: false)
      let loaded = IOVector(allocating: 512)
      try await parent.vmstate(at: 4096, iov: loaded, isLoad: true)
      #expect(loaded.toArray() == saved)
      #expect(log.events == ["file.save(4096, 512)", "file.load(4096, 512)"])
    }

    @Test("a driver with its own VM state area handles vmstate itself")
    func vmstateInTheNode() async throws {
      let log = EventLog()
      let parent = try await vmstateGraph(log, parentArea: true)
      try await parent.vmstate(at: 0, iov: vector(pattern(512)), isLoad: false)
      #expect(log.events == ["parent.save(0, 512)"])
    }

    @Test("without a VM state area in the node or its file child, vmstate is ENOTSUP")
    func vmstateNowhere() async throws {
      let log = EventLog()
      let node = BlockNode(name: "lone", driver: EventDriver(name: "lone", log: log))
      try await node.open()
      let error = await #expect(throws: BlockError.self) {
        try await node.vmstate(at: 0, iov: IOVector(allocating: 512), isLoad: true)
      }
      #expect(error?.code == .notSupported)
      #expect(log.events.isEmpty)
    }

    @Test("a negative vmstate offset is EIO before any driver sees it")
    func vmstateRangeChecked() async throws {
      // QEMU ≥ 6.2 ("block/io: bring request check to bdrv_co_{read,write}v_vmstate").
      let log = EventLog()
      let parent = try await vmstateGraph(log)
      var thrown: BlockError?
      do {
        try await parent.vmstate(at: -512, iov: vector(pattern(512)), isLoad: false)
      } catch let error as BlockError {
        thrown = error
      }
      #expect(thrown?.code == .ioError)
      #expect(log.events.isEmpty)

    }

    // MARK: writeSync

    @Test("writeSync is the write, then a flush that reaches the disk")
    func writeSyncCalls() async throws {
      let (node, driver) = try await makeNode()
      try await node.writeSync(at: 0, from: vector(pattern(4 * kib)))
      #expect(
        driver.ioCalls == [.write(offset: 0, length: 4 * kib, flags: []), .flushToOS, .flushToDisk])
    }

    @Test("writeSync returns only after the flush has reached the disk")
    func writeSyncIsABarrier() async throws {
      let (node, driver) = try await makeNode()
      let holder = CallHolder { $0 == .flushToDisk }
      holder.install(on: driver)
      let log = EventLog()
      let sync = Task { @BlockActor in
        try await node.writeSync(at: 0, from: vector(pattern(4 * kib)))
        log.append("returned")
      }
      await holder.gate.waitForHeld(1)
      #expect(log.events.isEmpty)
      holder.gate.releaseAll()
      try await sync.value
      #expect(log.events == ["returned"])
    }

    @Test("a failed writeSync write is not flushed")
    func writeSyncFailedWrite() async throws {
      let (node, driver) = try await makeNode()
      failCalls(on: driver, with: BlockError(.ioError, "injected"), where: \.isWrite)
      let error = await #expect(throws: BlockError.self) {
        try await node.writeSync(at: 0, from: vector(pattern(4 * kib)))
      }
      #expect(error?.code == .ioError)
      #expect(driver.ioCalls == [.write(offset: 0, length: 4 * kib, flags: [])])
    }
  }
}
