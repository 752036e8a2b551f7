import BlockCore
import CRBD

/// Creates RBD images as QEMU 7.2's `qemu_rbd_co_create_opts` does for
/// `qemu-img create -f raw rbd:...` (and `-f rbd`).
public enum RBDCreate {
  /// Creates the image `filename` names (an `rbd:` filename; a snapshot
  /// part is ignored, as QEMU ignores it) of `size` bytes, rounded up to
  /// 512, with objects of `clusterSize` bytes (a power of two, at least
  /// 4096; librbd's default, 4 MiB, when nil or 0). librbd's default image
  /// features apply. The connection runs on a thread of its own.
  @BlockActor
  public static func create(filename: String, size: Int64, clusterSize: Int64?) async throws {
    var order: Int32 = 0
    if let clusterSize, clusterSize != 0 {
      guard clusterSize > 0, clusterSize & (clusterSize - 1) == 0 else {
        throw BlockError(.invalidArgument, "obj size needs to be power of 2")
      }
      guard clusterSize >= 4096 else {
        throw BlockError(.invalidArgument, "obj size too small")
      }
      order = Int32(clusterSize.trailingZeroBitCount)
    }
    let location = try RBDLocation.parse(filename: filename)
    let requestedOrder = order
    let bytes = UInt64((size + 511) / 512 * 512)
    let outcome = await RBDAsync.blocking { () -> Result<Void, Error> in
      Result {
        let (cluster, ioContext) = try RBDConnection.connectPool(location, cache: false)
        defer {
          rados_ioctx_destroy(ioContext)
          rados_shutdown(cluster)
        }
        var objectOrder = requestedOrder
        let result = rbd_create(ioContext, location.image, bytes, &objectOrder)
        if result < 0 { throw RBDConnection.failure("error rbd create", result) }
      }
    }
    try outcome.get()
  }
}
