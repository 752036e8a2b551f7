import BlockCore
import CRBD
import SystemPackage

/// QEMU 7.2's `rbd` protocol driver (block/rbd.c): a node over a Ceph RBD
/// image through librbd (Debian's librbd-dev, Ceph 16 Pacific).
///
/// Reads, writes, flushes, discards and zero-writes are librbd asynchronous
/// requests whose completions resume the waiting request (``RBDAsync``);
/// many may be in flight. Connecting, opening, closing, resizing and
/// diff-iterating block, so they run on threads of their own. A write past
/// the end grows the image first, as QEMU's does; a snapshot opens
/// read-only only. Block status comes from `rbd_diff_iterate2` when the
/// image has a valid fast-diff map, as QEMU's `qemu_rbd_co_block_status`
/// (with its workaround for librbd before 1.17: none for clones or
/// non-default striping, which report all data).
///
/// Open it through ``ImageOpener`` (`rbd:pool/image` or `driver=rbd,...`).
@BlockActor
public final class RBDDriver: BlockDriver {
  /// Where the image is.
  public let location: RBDLocation
  /// The image's object size (QEMU's `cluster_size` for it).
  public let objectSize: Int64
  /// The image's size, as librbd last reported it (QEMU's `image_size`).
  var imageSize: Int64
  var connection: RBDConnection?
  /// The growth of the image a write past the end started, while it runs.
  var growth: Task<Void, Error>?
  /// Where failed requests are reported (QEMU's `error_report`).
  let errorReport: OpenContext.Diagnostics?

  init(
    location: RBDLocation, connection: RBDConnection, size: Int64, objectSize: Int64,
    errorReport: OpenContext.Diagnostics?
  ) {
    self.location = location
    self.errorReport = errorReport
    self.connection = connection
    self.imageSize = size
    self.objectSize = objectSize
  }

  public nonisolated var formatName: String { "rbd" }

  public var capabilities: DriverCapabilities {
    var capabilities = DriverCapabilities(kind: .protocolDriver)
    capabilities.hasBlockStatus = true
    capabilities.canWriteZeroes = true
    capabilities.supportedZeroFlags = [.mayUnmap, .noFallback]
    return capabilities
  }

  /// The image's current size (QEMU's `qemu_rbd_getlength`).
  public func length(_ node: BlockNode) async throws -> Int64 {
    let image = try openImage().image
    var size: UInt64 = 0
    let result = rbd_get_size(image, &size)
    if result < 0 { throw BlockError(Errno(rawValue: -result)) }
    imageSize = Int64(size)
    return imageSize
  }

  /// The object size (QEMU's `qemu_rbd_getinfo`).
  public func clusterSize(_ node: BlockNode) -> Int64? { objectSize }

  /// Reports a failure as QEMU's `error_report` does (to standard error
  /// unless the context gave a receiver).
  func report(_ message: String) {
    if let errorReport {
      errorReport(message)
    } else {
      writeToStandardError(message + "\n")
    }
  }

  /// The open connection, or EIO once closed.
  func openImage() throws -> RBDConnection {
    guard let connection else {
      throw BlockError(.ioError, "Image is closed", context: location.image)
    }
    return connection
  }

  public func close(_ node: BlockNode) async {
    guard let connection else { return }
    self.connection = nil
    await RBDAsync.blocking { connection.close() }
  }
}

extension RBDDriver {
  /// QEMU's `qemu_rbd_reopen_prepare`: librbd's image stays open as it is
  /// (always read-write for librbd); only a snapshot refuses to become
  /// writable. The location's options cannot change.
  public func prepareReopen(_ node: BlockNode, _ request: inout BlockReopenRequest) async throws
    -> any BlockReopenChange
  {
    if location.snapshot != nil && !request.nodeOptions.readOnly {
      throw BlockError(
        .invalidArgument, "Cannot change node '\(node.name)' to r/w when using RBD snapshot")
    }
    return UnchangedReopen()
  }
}
