extension BlockNode: BlockParent {
  public func childDrainedBegin() { beginQuiesce() }
  public func childDrainedEnd() { endQuiesce() }
  public var hasRequestsInFlight: Bool { inFlight > 0 }

  /// Begins a drained section on this node (QEMU's `bdrv_drained_begin`):
  /// parents stop issuing new requests, then the call waits until neither this
  /// node, its parents nor its children have requests in flight.
  public func drainedBegin() async {
    beginQuiesce()
    await waitUntilIdle()
  }

  /// Ends a drained section started by ``drainedBegin()``.
  public func drainedEnd() {
    endQuiesce()
  }

  /// Runs `body` inside a drained section.
  public func drained<T>(_ body: @BlockActor () async throws -> T) async rethrows -> T {
    await drainedBegin()
    defer { drainedEnd() }
    return try await body()
  }

  /// Waits until nothing is in flight on this subtree (QEMU's `bdrv_drain`).
  public func drain() async {
    await drainedBegin()
    drainedEnd()
  }

  private func beginQuiesce() {
    quiesceCounter += 1
    if quiesceCounter == 1 {
      for parent in parents { parent.parent?.childDrainedBegin() }
    }
  }

  private func endQuiesce() {
    precondition(quiesceCounter > 0, "drained section ended twice")
    quiesceCounter -= 1
    if quiesceCounter == 0 {
      for parent in parents { parent.parent?.childDrainedEnd() }
    }
  }

  /// Waits until this node, its ancestors and its descendants are idle.
  func waitUntilIdle() async {
    while let busy = firstBusyNode() {
      await busy.waitForIdle()
    }
  }

  /// Suspends until this node's in-flight count drops to zero, or until some
  /// parent (a backend) says it may have become idle.
  func waitForIdle() async {
    guard inFlight > 0 else {
      // The busy one is a non-node parent: wait for it through the backend.
      return
    }
    await idleWaiters.wait()
  }

  private func firstBusyNode() -> BlockNode? {
    if let node = subtree().first(where: { $0.inFlight > 0 }) { return node }
    for ancestor in ancestors() where ancestor.inFlight > 0 { return ancestor }
    return nil
  }

  /// This node and every node below it.
  func subtree() -> [BlockNode] {
    var result: [BlockNode] = []
    var stack = [self]
    var seen = Set<ObjectIdentifier>()
    while let node = stack.popLast() {
      guard seen.insert(ObjectIdentifier(node)).inserted else { continue }
      result.append(node)
      stack.append(contentsOf: node.children.map(\.node))
    }
    return result
  }

  /// Every node above this one.
  func ancestors() -> [BlockNode] {
    var result: [BlockNode] = []
    var stack = parents.compactMap { $0.parent as? BlockNode }
    var seen = Set<ObjectIdentifier>()
    while let node = stack.popLast() {
      guard seen.insert(ObjectIdentifier(node)).inserted else { continue }
      result.append(node)
      stack.append(contentsOf: node.parents.compactMap { $0.parent as? BlockNode })
    }
    return result
  }
}

extension BlockNode {
  /// Quiesces this node without waiting for its requests (drain-all
  /// quiesces every node first, then waits).
  func drainedBeginWithoutWaiting() { beginQuiesce() }
}
