import BlockCore
import CRBD
import SystemPackage

/// One connection to an RBD image: the librados cluster handle, the I/O
/// context on the image's pool (and namespace) and the open image.
///
/// `@unchecked Sendable`: the handles are librados/librbd objects, which
/// are thread-safe; the driver closes them once, after its last request.
final class RBDConnection: @unchecked Sendable {
  let cluster: rados_t
  let ioContext: rados_ioctx_t
  let image: rbd_image_t

  private init(cluster: rados_t, ioContext: rados_ioctx_t, image: rbd_image_t) {
    self.cluster = cluster
    self.ioContext = ioContext
    self.image = image
  }

  /// The error QEMU reports for a librados/librbd failure `result`
  /// (negative errno): `message: strerror`.
  static func failure(_ message: String, _ result: Int32) -> BlockError {
    let code = Errno(rawValue: -result)
    return BlockError(code, "\(message): \(Errno.describe(code))")
  }

  /// Connects to the cluster and opens the pool (QEMU's `qemu_rbd_connect`):
  /// the configuration file (the default locations when none is named, whose
  /// absence is no error), the key/value pairs, the monitors, the key and
  /// auth modes, the cache setting, then `rados_connect` and the pool's I/O
  /// context in the location's namespace. Blocking: call it on a thread of
  /// its own.
  static func connectPool(_ location: RBDLocation, cache: Bool) throws -> (rados_t, rados_ioctx_t) {
    var cluster: rados_t?
    var result = rados_create(&cluster, location.user)
    guard result >= 0, let cluster else { throw failure("error initializing", result) }
    do {
      result = rados_conf_read_file(cluster, location.conf)
      if let conf = location.conf, result < 0 {
        throw failure("error reading conf file \(conf)", result)
      }
      for pair in location.keyValuePairs {
        result = rados_conf_set(cluster, pair.name, pair.value)
        if result < 0 {
          var error = failure("invalid conf option \(pair.name)", result)
          error.code = .invalidArgument
          throw error
        }
      }
      if let hosts = location.monitorHosts {
        result = rados_conf_set(cluster, "mon_host", hosts)
        if result < 0 { throw failure("invalid conf option mon_host", result) }
      }
      if let key = location.key {
        result = rados_conf_set(cluster, "key", key)
        if result < 0 { throw failure("Could not set 'key'", result) }
      }
      if let modes = location.authClientRequired {
        result = rados_conf_set(cluster, "auth_client_required", modes.joined(separator: ";"))
        if result < 0 { throw failure("Could not set 'auth_client_required'", result) }
      }
      _ = rados_conf_set(cluster, "rbd_cache", cache ? "true" : "false")
      result = rados_connect(cluster)
      if result < 0 { throw failure("error connecting", result) }
      var ioContext: rados_ioctx_t?
      result = rados_ioctx_create(cluster, location.pool, &ioContext)
      guard result >= 0, let ioContext else {
        throw failure("error opening pool \(location.pool)", result)
      }
      if let namespace = location.namespace, !namespace.isEmpty {
        var exists = false
        result = rbd_namespace_exists(ioContext, namespace, &exists)
        if result < 0 || !exists {
          rados_ioctx_destroy(ioContext)
          if result < 0 { throw failure("error checking namespace", result) }
          throw BlockError(.noSuchFileOrDirectory, "namespace '\(namespace)' does not exist")
        }
      }
      rados_ioctx_set_namespace(ioContext, location.namespace ?? "")
      return (cluster, ioContext)
    } catch {
      rados_shutdown(cluster)
      throw error
    }
  }

  /// Connects and opens the image (QEMU's `qemu_rbd_open` up to
  /// `rbd_open`, which always opens read-write, or the snapshot).
  /// Blocking.
  static func open(_ location: RBDLocation, cache: Bool) throws -> RBDConnection {
    let (cluster, ioContext) = try connectPool(location, cache: cache)
    var image: rbd_image_t?
    let result = rbd_open(ioContext, location.image, &image, location.snapshot)
    guard result >= 0, let image else {
      rados_ioctx_destroy(ioContext)
      rados_shutdown(cluster)
      throw failure("error reading header from \(location.image)", result)
    }
    return RBDConnection(cluster: cluster, ioContext: ioContext, image: image)
  }

  /// Closes the image and the connection (flushing librbd's cache).
  /// Blocking.
  func close() {
    rbd_close(image)
    rados_ioctx_destroy(ioContext)
    rados_shutdown(cluster)
  }
}
