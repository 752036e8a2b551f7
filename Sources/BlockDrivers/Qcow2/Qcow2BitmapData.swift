import BlockCore

extension DirtyBitmap {
  /// The bytes of disk one bitmap data cluster of `clusterSize` bytes
  /// covers: `clusterSize * 8` chunks (QEMU's
  /// `bdrv_dirty_bitmap_serialization_coverage`).
  func bytesPerDataCluster(clusterSize: Int64) -> Int64 { clusterSize * 8 * granularity }

  /// Data cluster `index` of this bitmap in a qcow2 image (QEMU's
  /// `store_bitmap_data`): the chunks' bits least significant first, zero
  /// past the disk's end; nil when none of its chunks is dirty (QEMU then
  /// stores no cluster and a zero table entry).
  func dataCluster(_ index: Int, clusterSize: Int64, diskSize: Int64) -> [UInt8]? {
    let coverage = bytesPerDataCluster(clusterSize: clusterSize)
    let start = Int64(index) * coverage
    guard start < diskSize else { return nil }
    let end = min(diskSize, start + coverage)
    let ranges = dirtyRanges(in: start..<end)
    guard !ranges.isEmpty else { return nil }
    var bytes = [UInt8](repeating: 0, count: Int(clusterSize))
    for range in ranges {
      var chunk = (range.lowerBound - start) / granularity
      let last = (range.upperBound - 1 - start) / granularity
      while chunk <= last {
        bytes[Int(chunk >> 3)] |= 1 << UInt8(chunk & 7)
        chunk += 1
      }
    }
    return bytes
  }
}
