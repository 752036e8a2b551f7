import BlockCore

extension Qcow2Driver {
  /// QEMU's `qcow2_save_vmstate` and `qcow2_load_vmstate`: the VM state area
  /// lives past the guest disk, from the first L2 table's worth of guest
  /// offsets the disk does not use, and is read and written like guest data
  /// (the L1 table grows to reach it).
  public func vmstate(_ node: BlockNode, offset: Int64, iov: IOVector, isLoad: Bool) async throws {
    let firstUnusedL1 = Int64(header.requiredL1Entries(for: header.size))
    let areaStart = firstUnusedL1 << (Int64(header.clusterBits) * 2 - 3)
    let file = try fileNode(node)
    if isLoad {
      try await file.emit(.vmstateLoad)
      try await readGuest(node, offset: areaStart + offset, into: iov, takingLock: true)
    } else {
      try await file.emit(.vmstateSave)
      try await write(
        node, offset: areaStart + offset, length: Int64(iov.count), from: iov, flags: [])
    }
  }
}
