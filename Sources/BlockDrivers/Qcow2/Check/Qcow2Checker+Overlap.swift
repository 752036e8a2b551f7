import BlockCore

/// QEMU's metadata overlap check before the rebuild's writes
/// (`qcow2_pre_write_overlap_check` with the default "cached" checks): a
/// write over the header, an L1 table, an active L2 table, the refcount
/// table, a refcount block or the snapshot table marks the image corrupt and
/// fails with EIO.
extension Qcow2Checker {
  /// Throws ``Qcow2Checker/Abort`` (after marking the image corrupt) when
  /// `size` bytes at `offset` overlap metadata; `what` names the write in
  /// the error ("refblock", "reftable").
  func checkOverlap(offset: Int64, size: Int64, what: String) async throws {
    guard let overlapped = overlappedMetadata(offset: offset, size: size) else { return }
    await signalCorruption("Preventing invalid write on metadata (overlaps with \(overlapped))")
    reportError("ERROR writing \(what): \(BlockError(.ioError).codeDescription)")
    result.checkErrors += 1
    throw Abort(error: BlockError(.ioError))
  }

  /// The name QEMU gives the first metadata structure the range overlaps.
  func overlappedMetadata(offset: Int64, size: Int64) -> String? {
    guard size > 0 else { return nil }
    let start = offset & ~(clusterSize - 1)
    let end = (offset + size + clusterSize - 1) & ~(clusterSize - 1)
    /// Whether `length` bytes at `other` meet the cluster-aligned range
    /// (`start < other + length`, which could overflow for an offset read
    /// from the file).
    func overlaps(_ other: Int64, _ length: Int64) -> Bool {
      length > 0 && other < end && start - length < other
    }
    if start < clusterSize { return "qcow2_header" }
    if overlaps(Int64(header.l1TableOffset), Int64(header.l1Size) * 8) {
      return "active L1 table"
    }
    if overlaps(
      Int64(header.refcountTableOffset), Int64(header.refcountTableClusters) * clusterSize)
    {
      return "refcount table"
    }
    if overlaps(Int64(header.snapshotsOffset), snapshotTableSize) { return "snapshot table" }
    for snapshot in snapshots
    where overlaps(Int64(bitPattern: snapshot.l1TableOffset), Int64(snapshot.l1Size) * 8) {
      return "inactive L1 table"
    }
    for entry in l1Table where overlaps(Int64(entry & Qcow2Entry.offsetMask), clusterSize) {
      return "active L2 table"
    }
    for entry in oldTable
    where overlaps(Int64(bitPattern: entry & Self.refcountTableOffsetMask), clusterSize) {
      return "refcount block"
    }
    return nil
  }
}
