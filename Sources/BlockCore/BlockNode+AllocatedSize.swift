extension BlockNode {
  /// The bytes of storage the node occupies (QEMU's
  /// `bdrv_get_allocated_file_size`): the driver's answer when it has one; a
  /// protocol node without one throws ENOTSUP; a filter answers for the node
  /// it filters; a format sums its file and data children.
  public func allocatedFileSize() async throws -> Int64 {
    try checkInserted()
    do {
      return try await driver.allocatedFileSize(self)
    } catch let error as BlockError where error.code == BlockError.notSupportedCode {
      switch capabilities.kind {
      case .protocolDriver:
        throw error
      case .filter:
        guard let file else { throw error }
        return try await file.allocatedFileSize()
      case .format:
        var total: Int64 = 0
        for role in [ChildRole.file, .data] {
          if let child = child(role) { total += try await child.allocatedFileSize() }
        }
        return total
      }
    }
  }
}
