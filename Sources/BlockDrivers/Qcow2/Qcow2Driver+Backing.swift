import BlockCore

extension Qcow2Driver {
  /// QEMU's `qcow2_change_backing_file`: records `name` (nil: none) as the
  /// image's backing file and `format` (nil: none) in the backing format
  /// extension, rewriting the header cluster as `qcow2_update_header` does
  /// (other extensions kept). The backing child itself is not changed.
  ///
  /// Throws EINVAL for a name longer than 1023 bytes and ENOSPC when the
  /// header no longer fits in its cluster; the image is then unchanged.
  public func changeBackingFile(_ node: BlockNode, name: String?, format: String?) async throws {
    if let name, name.utf8.count > Qcow2Header.maxBackingNameLength {
      throw BlockError(.invalidArgument, "Backing file name too long")
    }
    var updated = header
    updated.backingFile = name
    updated.extensions.removeAll { $0.type == Qcow2HeaderExtension.backingFormat }
    if let format {
      updated.extensions.append(
        Qcow2HeaderExtension(type: Qcow2HeaderExtension.backingFormat, data: Array(format.utf8)))
    }
    let bytes: [UInt8]
    do {
      bytes = try updated.encode()
    } catch let error as BlockError where error.code == .invalidArgument {
      // The name's length is fine; it is the header cluster that is full.
      throw BlockError(.noSpace, "No space left in the file header")
    }
    let file = try fileNode(node)
    try await lock.withLock {
      try await file.write(at: 0, bytes: bytes)
      try await file.flush()
      header = updated
    }
  }
}
