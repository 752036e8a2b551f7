import BlockCore
import CFileSupport
import SystemPackage

/// QEMU's block permissions (`BLK_PERM_*`): what a user of an image does
/// with it, and (as a "shared" set) what it lets others do. Bit `n` is
/// locked at byte 100 + n while held and at byte 200 + n while not shared.
public struct BlockPermissions: OptionSet, Sendable, Hashable, CustomStringConvertible {
  public let rawValue: UInt8
  public init(rawValue: UInt8) { self.rawValue = rawValue }

  /// Reads return what was written (`BLK_PERM_CONSISTENT_READ`).
  public static let consistentRead = BlockPermissions(rawValue: 0x01)
  /// Writes change the data (`BLK_PERM_WRITE`).
  public static let write = BlockPermissions(rawValue: 0x02)
  /// Writes that do not change the data (`BLK_PERM_WRITE_UNCHANGED`).
  public static let writeUnchanged = BlockPermissions(rawValue: 0x04)
  /// Changing the length (`BLK_PERM_RESIZE`).
  public static let resize = BlockPermissions(rawValue: 0x08)
  /// Changing the graph below (`BLK_PERM_GRAPH_MOD`, gone from newer QEMU).
  public static let graphMod = BlockPermissions(rawValue: 0x10)
  /// Every permission.
  public static let all: BlockPermissions = [
    .consistentRead, .write, .writeUnchanged, .resize, .graphMod,
  ]

  /// Each single permission with its bit number and QEMU's name for it.
  static let named: [(bit: Int64, permission: BlockPermissions, name: String)] = [
    (0, .consistentRead, "consistent read"), (1, .write, "write"),
    (2, .writeUnchanged, "write unchanged"), (3, .resize, "resize"),
    (4, .graphMod, "change children"),
  ]

  public var description: String {
    let names = Self.named.filter { contains($0.permission) }.map(\.name)
    return names.isEmpty ? "none" : names.joined(separator: ", ")
  }
}

/// What one user of an image holds and lets others hold.
public struct ImagePermissions: Sendable, Hashable {
  /// Permissions taken.
  public var perm: BlockPermissions
  /// Permissions others may take at the same time.
  public var shared: BlockPermissions

  /// Creates a permission pair.
  public init(perm: BlockPermissions, shared: BlockPermissions) {
    self.perm = perm
    self.shared = shared
  }

  /// What Spindle takes on an image it opens: reading, plus writing and
  /// resizing when writable; others may not write or resize meanwhile (as
  /// QEMU's format drivers ask of their file), unless `forceShare` (qemu-img
  /// -U, read-only only) shares everything.
  public static func forOpen(readOnly: Bool, forceShare: Bool, sharesWrites: Bool = false)
    -> ImagePermissions
  {
    if sharesWrites {
      // A raw image or a file opened directly: QEMU's tools share everything
      // and hold only what they use.
      return ImagePermissions(
        perm: readOnly ? .consistentRead : [.consistentRead, .write], shared: .all)
    }
    if readOnly {
      return ImagePermissions(
        perm: .consistentRead,
        shared: forceShare ? .all : BlockPermissions.all.subtracting([.write, .resize]))
    }
    return ImagePermissions(
      perm: [.consistentRead, .write, .resize],
      shared: [.consistentRead, .writeUnchanged, .graphMod])
  }
}

/// The `locking=` option of the file driver.
public enum FileLockingMode: String, Sendable {
  /// Lock the image (OFD locks).
  case on
  /// Take no locks and check none.
  case off
  /// Lock when the system has OFD locks (the default).
  case auto
}

/// QEMU's image locking protocol (file-posix's `raw_apply_lock_bytes`,
/// `raw_check_lock_bytes`, `raw_handle_perm_lock`), so that Spindle and QEMU
/// processes refuse each other as two QEMU processes do.
///
/// Every held permission bit `n` is a shared OFD lock on byte 100 + n; every
/// permission not shared is a shared lock on byte 200 + n. Taking permissions
/// means locking the bytes, then testing that no other open file description
/// locks the bytes that conflict: 200 + n for each permission wanted (someone
/// refuses to share it) and 100 + n for each permission not shared (someone
/// holds it). The calls block, so they run on ``FileIOPool``.
struct ImageLock: Sendable {
  static let permissionBase: Int64 = 100
  static let sharedBase: Int64 = 200

  /// The descriptor the locks belong to.
  let fd: Int32
  /// Permission bits whose byte at 100 + n is locked.
  private(set) var lockedPerm: BlockPermissions = []
  /// Permission bits whose byte at 200 + n is locked (not shared).
  private(set) var lockedUnshared: BlockPermissions = []

  init(fd: Int32) { self.fd = fd }

  /// Moves to `new` permissions: locks what they need, checks for conflicts,
  /// then releases what only the old ones needed. On a conflict everything
  /// returns to the old state and the error names the first conflicting
  /// permission, with QEMU's hint naming `filename`.
  mutating func change(to new: ImagePermissions, from old: ImagePermissions, filename: String)
    throws(BlockError)
  {
    do throws(BlockError) {
      try apply(
        perm: old.perm.union(new.perm),
        unshared: BlockPermissions.all.subtracting(old.shared.intersection(new.shared)),
        unlock: false)
      do throws(BlockError) {
        try check(new)
      } catch {
        var error = error
        error.message += "\nIs another process using the image [\(filename)]?"
        throw error
      }
    } catch {
      try? apply(
        perm: old.perm, unshared: BlockPermissions.all.subtracting(old.shared), unlock: true)
      throw error
    }
    try? apply(perm: new.perm, unshared: BlockPermissions.all.subtracting(new.shared), unlock: true)
  }

  /// Releases every lock byte.
  mutating func release() {
    try? apply(perm: [], unshared: [], unlock: true)
  }

  /// Locks the bytes of `perm` and `unshared` that are not locked yet; with
  /// `unlock`, releases locked bytes they do not name (QEMU's
  /// `raw_apply_lock_bytes`).
  private mutating func apply(perm: BlockPermissions, unshared: BlockPermissions, unlock: Bool)
    throws(BlockError)
  {
    try apply(perm, locked: &lockedPerm, base: Self.permissionBase, unlock: unlock)
    try apply(unshared, locked: &lockedUnshared, base: Self.sharedBase, unlock: unlock)
  }

  private func apply(
    _ wanted: BlockPermissions, locked: inout BlockPermissions, base: Int64, unlock: Bool
  ) throws(BlockError) {
    for (bit, permission, _) in BlockPermissions.named {
      let offset = base + bit
      if wanted.contains(permission) && !locked.contains(permission) {
        guard cfs_ofd_setlock(fd, offset, 1, 0) == 0 else {
          throw Self.lockError(PosixFile.lastError, "Failed to lock byte \(offset)")
        }
        locked.insert(permission)
      } else if unlock && locked.contains(permission) && !wanted.contains(permission) {
        guard cfs_ofd_setlock(fd, offset, 1, 2) == 0 else {
          let code = PosixFile.lastError
          throw BlockError(code, "Failed to unlock byte \(offset): \(Errno.describe(code))")
        }
        locked.remove(permission)
      }
    }
  }

  /// Tests for conflicting locks held through other open file descriptions
  /// (QEMU's `raw_check_lock_bytes`).
  private func check(_ permissions: ImagePermissions) throws(BlockError) {
    for (bit, permission, name) in BlockPermissions.named
    where permissions.perm.contains(permission) {
      try test(Self.sharedBase + bit, failure: "Failed to get \"\(name)\" lock")
    }
    for (bit, permission, name) in BlockPermissions.named
    where !permissions.shared.contains(permission) {
      try test(Self.permissionBase + bit, failure: "Failed to get shared \"\(name)\" lock")
    }
  }

  private func test(_ offset: Int64, failure message: String) throws(BlockError) {
    switch cfs_ofd_testlock(fd, offset, 1, 1) {
    case 0: return
    case 1: throw BlockError(.resourceTemporarilyUnavailable, message)
    default: throw Self.lockError(PosixFile.lastError, message)
    }
  }

  /// QEMU elides the errno text when the byte is merely locked by someone else.
  private static func lockError(_ code: Errno, _ message: String) -> BlockError {
    if code == .resourceTemporarilyUnavailable || code == .permissionDenied {
      return BlockError(.resourceTemporarilyUnavailable, message)
    }
    return BlockError(code, "\(message): \(Errno.describe(code))")
  }
}
