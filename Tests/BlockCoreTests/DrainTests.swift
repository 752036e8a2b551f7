import BlockCore
import BlockDrivers
import BlockTestSupport
import Testing

extension EngineTests {
  /// Drained sections, as QEMU 7.2's `bdrv_drained_begin` / `bdrv_drained_end`
  /// and `bdrv_drain_all` run them: the node's parents (up to the backends)
  /// stop issuing requests, the call returns once nothing is in flight on the
  /// node, its children or its parents, and the backends resume their held
  /// requests when the outermost section ends.
  @Suite("Drain")
  @BlockActor
  struct DrainTests {
    @Test("drainedBegin waits for a request in flight")
    func waitsForInFlightRequest() async throws {
      let (node, driver) = try await makeRecordingNode(size: 1 * mib)
      let holder = CallHolder(\.isWrite)
      holder.install(on: driver)
      let log = EventLog()
      let write = Task { @BlockActor in try await node.write(at: 0, bytes: pattern(4 * kib)) }
      await holder.gate.waitForHeld(1)

      let drain = Task { @BlockActor in
        await node.drainedBegin()
        log.append("drained")
      }
      try await waitUntil("the drained section has begun") { node.quiesceCounter == 1 }
      #expect(log.events.isEmpty)  // the write is still at the driver
      #expect(node.inFlight == 1)

      holder.gate.releaseAll()
      try await write.value
      await drain.value
      #expect(log.events == ["drained"])
      #expect(node.inFlight == 0)
      node.drainedEnd()
      #expect(node.quiesceCounter == 0)
    }

    @Test("a backend holds new requests during the drained section and releases them at its end")
    func backendHoldsNewRequests() async throws {
      let (node, driver) = try await makeRecordingNode(size: 1 * mib)
      let backend = BlockBackend(root: node)
      let holder = CallHolder(\.isWrite)
      holder.install(on: driver)
      let log = EventLog()
      let first = Task { @BlockActor in
        try await backend.write(at: 0, from: vector(pattern(4 * kib)))
      }
      await holder.gate.waitForHeld(1)
      let drain = Task { @BlockActor in
        await node.drainedBegin()
        log.append("drained")
      }
      try await waitUntil("the drained section has begun") { node.quiesceCounter == 1 }

      let second = Task { @BlockActor in
        log.append("second issued")
        try await backend.write(at: 8 * kib, from: vector(pattern(4 * kib, seed: 2)))
        log.append("second done")
      }
      try await waitUntil("the second write is issued") { log.events.contains("second issued") }
      let firstWrite = DriverCall.write(offset: 0, length: 4 * kib, flags: [])
      #expect(driver.ioCalls == [firstWrite])  // held in the backend

      holder.gate.releaseAll()
      try await first.value
      await drain.value
      #expect(log.events == ["second issued", "drained"])
      #expect(driver.ioCalls == [firstWrite])  // still held: the section has not ended

      node.drainedEnd()
      try await second.value
      #expect(log.events == ["second issued", "drained", "second done"])
      #expect(driver.ioCalls == [firstWrite, .write(offset: 8 * kib, length: 4 * kib, flags: [])])
    }

    @Test("a drained section on a backing node quiesces the backend of the overlay above it")
    func backingNodeQuiescesBackendAbove() async throws {
      let (base, _) = try await makeRecordingNode(size: 1 * mib, name: "base")
      let (top, topDriver) = try await makeRecordingNode(size: 1 * mib, backing: base, name: "top")
      let backend = BlockBackend(root: top)
      await base.drainedBegin()
      #expect(top.quiesceCounter == 1)
      try await expectWriteHeld(through: backend, reaching: topDriver) { base.drainedEnd() }
    }

    @Test("nested drained sections release the backend only when the outermost one ends")
    func nestedSections() async throws {
      let (node, driver) = try await makeRecordingNode(size: 1 * mib)
      let backend = BlockBackend(root: node)
      let log = EventLog()
      await node.drainedBegin()
      await node.drainedBegin()
      #expect(node.quiesceCounter == 2)

      let write = Task { @BlockActor in
        log.append("issued")
        try await backend.write(at: 0, from: vector(pattern(4 * kib)))
        log.append("done")
      }
      try await waitUntil("the write is issued") { log.events.contains("issued") }
      node.drainedEnd()
      #expect(node.quiesceCounter == 1)
      // The inner end must resume nothing: give the write every chance to run.
      await letOtherTasksRun()
      #expect(driver.ioCalls.isEmpty)
      #expect(log.events == ["issued"])

      node.drainedEnd()
      try await write.value
      #expect(log.events == ["issued", "done"])
      #expect(driver.ioCalls == [.write(offset: 0, length: 4 * kib, flags: [])])
    }

    @Test("draining a child waits for a request in flight on its parent")
    func childDrainWaitsForParent() async throws {
      let (base, _) = try await makeRecordingNode(size: 1 * mib, name: "base")
      let (top, topDriver) = try await makeRecordingNode(size: 1 * mib, backing: base, name: "top")
      let holder = CallHolder(\.isRead)
      holder.install(on: topDriver)
      let log = EventLog()
      let read = Task { @BlockActor in _ = try await top.read(at: 0, count: Int(4 * kib)) }
      await holder.gate.waitForHeld(1)

      let drain = Task { @BlockActor in
        await base.drainedBegin()
        log.append("drained")
      }
      try await waitUntil("the drained section has begun") { base.quiesceCounter == 1 }
      #expect(top.quiesceCounter == 1)  // the parent is quiesced too
      #expect(log.events.isEmpty)  // and its read is still in flight

      holder.gate.releaseAll()
      try await read.value
      await drain.value
      #expect(log.events == ["drained"])
      base.drainedEnd()
      #expect(top.quiesceCounter == 0)
    }

    @Test("drainAll waits for requests in flight on every node")
    func drainAllWaitsEverywhere() async throws {
      try await BlockGraph.withSeparateGraph {
        let (first, firstDriver) = try await makeRecordingNode(size: 1 * mib, name: "first")
        let (second, secondDriver) = try await makeRecordingNode(size: 1 * mib, name: "second")
        let firstHolder = CallHolder(\.isWrite)
        firstHolder.install(on: firstDriver)
        let secondHolder = CallHolder(\.isWrite)
        secondHolder.install(on: secondDriver)
        let log = EventLog()
        let firstWrite = Task { @BlockActor in
          try await first.write(at: 0, bytes: pattern(4 * kib))
        }
        let secondWrite = Task { @BlockActor in
          try await second.write(at: 0, bytes: pattern(4 * kib))
        }
        await firstHolder.gate.waitForHeld(1)
        await secondHolder.gate.waitForHeld(1)

        let drain = Task { @BlockActor in
          await BlockGraph.drainAll()
          log.append("drained")
        }
        try await waitUntil("the drain has begun") {
          first.quiesceCounter > 0 && second.quiesceCounter > 0
        }
        #expect(log.events.isEmpty)

        firstHolder.gate.releaseAll()
        try await firstWrite.value
        secondHolder.gate.releaseAll()
        try await secondWrite.value
        await drain.value
        #expect(log.events == ["drained"])
        #expect(first.inFlight == 0 && second.inFlight == 0)
        #expect(first.quiesceCounter == 0 && second.quiesceCounter == 0)
      }
    }

    @Test("between drainAllBegin and drainAllEnd backends hold new requests")
    func drainAllHoldsBackends() async throws {
      try await BlockGraph.withSeparateGraph {
        let (node, driver) = try await makeRecordingNode(size: 1 * mib)
        let backend = BlockBackend(root: node)
        await BlockGraph.drainAllBegin()
        try await expectWriteHeld(through: backend, reaching: driver) { BlockGraph.drainAllEnd() }
      }
    }

    @Test("a drain-all in a separate graph neither waits for nor holds another graph's nodes")
    func separateGraphsDrainApart() async throws {
      let (outside, outsideDriver) = try await makeRecordingNode(size: 1 * mib, name: "outside")
      let holder = CallHolder(\.isWrite)
      holder.install(on: outsideDriver)
      let held = Task { @BlockActor in
        try await outside.write(at: 0, bytes: pattern(4 * kib))
      }
      await holder.gate.waitForHeld(1)
      let outsideBackend = BlockBackend(root: outside)
      try await BlockGraph.withSeparateGraph {
        let (inside, _) = try await makeRecordingNode(size: 1 * mib, name: "inside")
        try #require(BlockGraph.allNodes.map(\.name) == ["inside"])
        // Returns with the outside write still held at its gate.
        await BlockGraph.drainAllBegin()
        #expect(inside.quiesceCounter == 1)
        #expect(outside.quiesceCounter == 0 && outside.inFlight == 1)
        // The outside graph still takes new requests during the section.
        try await outsideBackend.read(at: 8 * kib, into: IOVector(allocating: Int(4 * kib)))
        BlockGraph.drainAllEnd()
        #expect(inside.quiesceCounter == 0)
      }
      #expect(BlockGraph.allNodes.contains { $0 === outside })
      #expect(!BlockGraph.allNodes.contains { $0.name == "inside" })
      holder.gate.releaseAll()
      try await held.value
    }

    struct BodyFailed: Error {}

    @Test("drained { } returns the body's result and ends the section even when it throws")
    func drainedBody() async throws {
      let (node, _) = try await makeRecordingNode(size: 1 * mib)
      let value = await node.drained {
        node.quiesceCounter
      }
      #expect(value == 1)
      #expect(node.quiesceCounter == 0)

      await #expect(throws: BodyFailed.self) {
        try await node.drained { () async throws -> Int in throw BodyFailed() }
      }
      #expect(node.quiesceCounter == 0)
    }

    /// A 4 KiB write issued through `backend` during a drained section is
    /// held there: nothing reaches `driver` until `end` ends the section,
    /// then exactly that write does.
    private func expectWriteHeld(
      through backend: BlockBackend, reaching driver: RecordingDriver, end: () -> Void
    ) async throws {
      let log = EventLog()
      let write = Task { @BlockActor in
        log.append("issued")
        try await backend.write(at: 0, from: vector(pattern(4 * kib)))
        log.append("done")
      }
      try await waitUntil("the write is issued") { log.events.contains("issued") }
      #expect(driver.ioCalls.isEmpty)

      end()
      try await write.value
      #expect(log.events == ["issued", "done"])
      #expect(driver.ioCalls == [.write(offset: 0, length: 4 * kib, flags: [])])
    }
  }
}
