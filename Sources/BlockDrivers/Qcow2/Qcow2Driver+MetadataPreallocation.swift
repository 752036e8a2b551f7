import BlockCore

extension Qcow2Driver {
  /// Whether the image looks metadata-preallocated (QEMU's
  /// `qcow2_detect_metadata_preallocation`): its refcounts claim clearly more
  /// clusters than the file really occupies (at least a ninth more, and two
  /// more), so some clusters with data are holes worth asking the file about.
  /// Any failure to tell (a file that cannot report its allocation, an
  /// unreadable refcount block) means no. Call with the lock held.
  func detectMetadataPreallocation(_ node: BlockNode) async -> Bool {
    do {
      let file = try fileNode(node)
      let fileLength = file.length
      let realClusters = try await file.allocatedFileSize() / header.clusterSize
      let threshold = max(realClusters * 10 / 9, realClusters + 2)
      let refcounts = try await refcountsForReading(file)
      let endCluster = (fileLength + header.clusterSize - 1) / header.clusterSize
      var used: Int64 = 0
      var cluster: Int64 = 0
      while cluster < endCluster && used < threshold {
        if try await refcounts.refcount(of: cluster, file: file) > 0 { used += 1 }
        cluster += 1
      }
      return used >= threshold
    } catch {
      return false
    }
  }

  /// The refcounts of a writable open, or for a read-only one a fresh view
  /// of the refcount table read from the file.
  private func refcountsForReading(_ file: BlockNode) async throws -> Qcow2Refcounts {
    if let refcounts { return refcounts }
    let entries = Int(header.refcountTableClusters) * Int(header.clusterSize) / 8
    let bytes = try await file.read(at: Int64(header.refcountTableOffset), count: entries * 8)
    return Qcow2Refcounts(header: header, table: bytes.bigEndianUInt64s(count: entries))
  }
}
