import BlockCore
import CRBD
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// librbd snapshots as QEMU 7.2's rbd driver presents them to
/// `qemu-img snapshot` and `info`: a snapshot's ID is its name, its VM
/// state size is the image's size at the time, and it has no date, clock
/// or instruction count (zeroes).
extension RBDDriver {
  /// The image's snapshots in librbd's order (QEMU's `qemu_rbd_snap_list`);
  /// none when librbd cannot list them.
  public func snapshots() async throws -> [Qcow2SnapshotInfo] {
    let connection = try openImage()
    return await RBDAsync.blocking { () -> [Qcow2SnapshotInfo] in
      var capacity: Int32 = 100
      while true {
        let entries = UnsafeMutablePointer<rbd_snap_info_t>.allocate(capacity: Int(capacity))
        defer { entries.deallocate() }
        let count = rbd_snap_list(connection.image, entries, &capacity)
        if count == -ERANGE { continue }
        guard count > 0 else { return [] }
        defer { rbd_snap_list_end(entries) }
        return (0..<Int(count)).map { index in
          let name = String(cString: entries[index].name)
          return Qcow2SnapshotInfo(
            id: name, name: name, vmStateSize: entries[index].size, dateSeconds: 0,
            dateNanoseconds: 0, vmClockNanoseconds: 0, icount: 0)
        }
      }
    }
  }

  /// Takes a snapshot named `name` (QEMU's `qemu_rbd_snap_create`): a name
  /// is required, and failures are reported as QEMU reports them.
  public func createSnapshot(name: String) async throws {
    guard !name.isEmpty else { throw BlockError(.invalidArgument) }
    let connection = try openImage()
    let result = await RBDAsync.blocking { rbd_snap_create(connection.image, name) }
    if result < 0 {
      let code = Errno(rawValue: -result)
      report("failed to create snap: \(Errno.describe(code))")
      throw BlockError(code)
    }
  }

  /// Removes the snapshot `name` (QEMU's `qemu_rbd_snap_remove`).
  public func deleteSnapshot(name: String) async throws {
    let connection = try openImage()
    let result = await RBDAsync.blocking { rbd_snap_remove(connection.image, name) }
    if result < 0 { throw RBDConnection.failure("Failed to remove the snapshot", result) }
  }

  /// Rolls the image back to the snapshot `name` (QEMU's
  /// `qemu_rbd_snap_rollback`); throws librbd's errno.
  public func rollback(to name: String) async throws {
    let connection = try openImage()
    let result = await RBDAsync.blocking { rbd_snap_rollback(connection.image, name) }
    if result < 0 { throw BlockError(Errno(rawValue: -result)) }
  }
}
