extension BlockNode {
  /// Changes the node's length (QEMU's `bdrv_co_truncate`). Growing serialises
  /// against requests touching the new range.
  public func truncate(
    to newLength: Int64, exact: Bool = true, preallocation: PreallocationMode = .off
  ) async throws {
    try checkInserted()
    if newLength < 0 { throw BlockError(.invalidArgument, "Image size cannot be negative") }
    if newLength > Self.maxLength {
      throw BlockError(.fileTooLarge, "Image size is too large")
    }
    if isReadOnly { throw BlockError(.permissionDenied, "Image is read-only") }
    try await inFlight {
      let oldLength = length
      let grown = max(0, newLength - oldLength)
      let request = tracked.begin(.truncate, offset: newLength - grown, bytes: grown)
      defer { tracked.end(request) }
      if grown > 0 {
        await tracked.makeSerialising(request, alignment: 1)
      } else {
        await tracked.waitForConflicts(request)
      }
      try await driver.truncate(self, to: newLength, exact: exact, preallocation: preallocation)
      length = Self.sectorRounded(try await driver.length(self))
      writeGeneration &+= 1
    }
  }

  /// Writes `iov` at `offset` then flushes (QEMU's `bdrv_pwrite_sync`): when it
  /// returns the data is durable.
  public func writeSync(at offset: Int64, from iov: IOVector, flags: RequestFlags = []) async throws
  {
    try await write(at: offset, from: iov, flags: flags)
    try await flush()
  }

  /// Reads or writes the VM state area (QEMU's `bdrv_co_rw_vmstate`): the
  /// driver's own area, else the file child's, else ENOTSUP.
  public func vmstate(at offset: Int64, iov: IOVector, isLoad: Bool) async throws {
    try checkInserted()
    try Self.checkRange(offset, Int64(iov.count), limitTo32Bit: true)
    if !isLoad { try checkWritable() }
    try await inFlight {
      do {
        try await driver.vmstate(self, offset: offset, iov: iov, isLoad: isLoad)
      } catch let error as BlockError where error.code == BlockError.notSupportedCode {
        guard let file else { throw error }
        try await file.vmstate(at: offset, iov: iov, isLoad: isLoad)
      }
    }
  }

  /// Tells the node and its children that a batch of requests begins (QEMU's
  /// `bdrv_io_plug`): children first, and each driver only on the outermost
  /// plug of nested pairs.
  public func plug() {
    for child in children { child.node.plug() }
    plugDepth += 1
    if plugDepth == 1 { driver.plug(self) }
  }

  /// Ends a batch started by ``plug()``: the driver is unplugged when the
  /// outermost pair ends, then the children.
  public func unplug() {
    precondition(plugDepth > 0, "unplug without plug")
    plugDepth -= 1
    if plugDepth == 0 { driver.unplug(self) }
    for child in children { child.node.unplug() }
  }

  /// Writes compressed data (whole clusters; the driver decides what it accepts).
  public func writeCompressed(at offset: Int64, from iov: IOVector) async throws {
    try await write(at: offset, from: iov, flags: .writeCompressed)
  }
}
