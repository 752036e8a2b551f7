import BlockCore
import CRBD

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

extension RBDDriver {
  /// QEMU 7.2's `qemu_rbd_co_block_status`: everything is data unless the
  /// image has the fast-diff feature with a valid map; then
  /// `rbd_diff_iterate2` (whole objects, parent included) tells allocated
  /// objects (data) from holes (zero). With librbd before 1.17 (Ceph 16's
  /// is 1.16) the offset is rounded down to an object boundary to work
  /// around librbd's bug 53784, which is only valid for images without a
  /// parent and with default striping: clones and striped images report
  /// all data. `wantZero` changes nothing, as in QEMU.
  public func blockStatus(_ node: BlockNode, wantZero: Bool, offset: Int64, length: Int64)
    async throws -> BlockStatus
  {
    let connection = try openImage()
    let objectSize = UInt64(objectSize)
    let answer = await RBDAsync.blocking {
      RBDDiff.query(connection.image, offset: UInt64(offset), length: UInt64(length), objectSize)
    }
    guard let (allocated, count) = answer else {
      return BlockStatus(
        flags: [.data, .offsetValid], count: length, mapOffset: offset, file: node)
    }
    return BlockStatus(
      flags: allocated ? [.data, .offsetValid] : [.zero, .offsetValid], count: Int64(count),
      mapOffset: offset, file: node)
  }
}

/// The diff-iterate part of ``RBDDriver/blockStatus(_:wantZero:offset:length:)``,
/// run on a thread of its own (librbd's call blocks).
enum RBDDiff {
  /// What the callback has found so far (QEMU's `RBDDiffIterateReq`).
  struct Request {
    var offset: UInt64
    var bytes: UInt64 = 0
    var exists = false
  }

  /// The value the callback returns to stop the iteration.
  static let stop: Int32 = -9000

  /// Whether the range at `offset` starts allocated and how far its status
  /// reaches; nil when the image cannot tell (all data).
  static func query(_ image: rbd_image_t, offset: UInt64, length: UInt64, _ objectSize: UInt64)
    -> (allocated: Bool, count: UInt64)?
  {
    var features: UInt64 = 0
    guard rbd_get_features(image, &features) >= 0, features & UInt64(RBD_FEATURE_FAST_DIFF) != 0
    else { return nil }
    var flags: UInt64 = 0
    guard rbd_get_flags(image, &flags) >= 0, flags & UInt64(RBD_FLAG_FAST_DIFF_INVALID) == 0
    else { return nil }
    // librbd < 1.17 (bug 53784): only for images without striping or parent.
    if features & UInt64(RBD_FEATURE_STRIPINGV2) != 0 { return nil }
    var parent = rbd_linked_image_spec_t()
    var parentSnapshot = rbd_snap_spec_t()
    let parentResult = rbd_get_parent(image, &parent, &parentSnapshot)
    if parentResult >= 0 {
      rbd_linked_image_spec_cleanup(&parent)
      rbd_snap_spec_cleanup(&parentSnapshot)
    }
    if parentResult != -ENOENT { return nil }
    let head = offset & (objectSize - 1)
    var request = Request(offset: offset - head)
    let bytes = length + head
    let result = withUnsafeMutablePointer(to: &request) { pointer in
      rbd_diff_iterate2(image, nil, pointer.pointee.offset, bytes, 1, 1, diffCallback, pointer)
    }
    if result < 0 && result != stop { return nil }
    if !request.exists {
      if result == 0 { request.bytes = bytes }
      guard request.bytes > head else { return nil }
      return (false, request.bytes - head)
    }
    guard request.bytes > head else { return nil }
    return (true, request.bytes - head)
  }

  /// QEMU's `qemu_rbd_diff_iterate_cb`: extends the request's range while
  /// its allocation status stays the same, and stops at the first change.
  static let diffCallback: @convention(c) (UInt64, Int, Int32, UnsafeMutableRawPointer?) -> Int32 =
    {
      offset, length, exists, argument in
      let request = argument!.assumingMemoryBound(to: Request.self)
      if exists == 0 { return 0 }
      if !request.pointee.exists && offset > request.pointee.offset {
        request.pointee.bytes = offset - request.pointee.offset
        return RBDDiff.stop
      }
      if request.pointee.exists && offset > request.pointee.offset + request.pointee.bytes {
        return RBDDiff.stop
      }
      request.pointee.bytes += UInt64(length)
      request.pointee.exists = true
      return 0
    }
}
