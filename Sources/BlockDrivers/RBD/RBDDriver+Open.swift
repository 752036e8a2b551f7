import BlockCore
import CRBD

extension RBDDriver {
  /// The ``DriverFactory`` of `driver=rbd` (QEMU's `qemu_rbd_open`): the
  /// location from an `rbd:` filename or from the options form, then
  /// connect and open off the block layer's thread, then the image's size
  /// and object size. A snapshot opens read-only only ("rbd snapshots are
  /// read-only"). `cache=none`/`directsync` turn librbd's cache off, as
  /// QEMU's `BDRV_O_NOCACHE` does.
  public static func openNode(_ options: inout DriverOptions, _ context: OpenContext)
    async throws -> BlockNode
  {
    let location: RBDLocation
    if let filename = options.take("filename") {
      location = try RBDLocation.parse(filename: filename)
    } else {
      let secrets = context.secrets.merging(ImageOpener.definedSecrets) { given, _ in given }
      location = try RBDLocation.take(from: &options, secrets: secrets)
    }
    let cache = !context.node.cache.direct
    let opened = await RBDAsync.blocking { () -> Result<(RBDConnection, rbd_image_info_t), Error> in
      Result {
        let connection = try RBDConnection.open(location, cache: cache)
        var info = rbd_image_info_t()
        let result = rbd_stat(connection.image, &info, MemoryLayout<rbd_image_info_t>.size)
        if result < 0 {
          connection.close()
          throw RBDConnection.failure("error getting image info from \(location.image)", result)
        }
        return (connection, info)
      }
    }
    let (connection, info) = try opened.get()
    if location.snapshot != nil && !context.node.readOnly {
      await RBDAsync.blocking { connection.close() }
      throw BlockError(.permissionDenied, "rbd snapshots are read-only")
    }
    let driver = RBDDriver(
      location: location, connection: connection, size: Int64(info.size),
      objectSize: Int64(info.obj_size), errorReport: context.errorReport)
    return try await ImageOpener.openNode(over: driver, options: context.node)
  }
}
