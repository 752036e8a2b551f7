import BlockCore
import BlockTestSupport
import CFileSupport
import Foundation
import Testing

@testable import BlockDrivers

/// Image locking with QEMU's byte layout, within Spindle and against real
/// qemu-io / qemu-img processes.
@Suite("file driver: image locking")
@BlockActor
struct FileLockingTests {
  let scratch: ScratchDirectory
  static let permissionBytes: [Int64] = Array(100..<105)
  static let sharedBytes: [Int64] = Array(200..<205)

  init() throws { scratch = try ScratchDirectory() }

  /// The lock bytes (100...104, 200...204) another open file description
  /// sees locked.
  func lockedBytes(_ path: String) throws -> Set<Int64> {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw BlockError(.ioError, "cannot open \(path)") }
    defer { close(fd) }
    var locked: Set<Int64> = []
    for byte in Self.permissionBytes + Self.sharedBytes {
      let result = cfs_ofd_testlock(fd, byte, 1, 1)
      guard result >= 0 else { throw BlockError(.ioError, "F_OFD_GETLK failed") }
      if result == 1 { locked.insert(byte) }
    }
    return locked
  }

  func hint(_ path: String) -> String { "\nIs another process using the image [\(path)]?" }

  @Test("lock bytes follow QEMU's layout for each way of opening")
  func layout() async throws {
    let path = try scratch.makeFile("disk.img", size: 1 << 20)
    let writer = try await openFileNode(path, underFormat: true)
    #expect(try lockedBytes(path) == [100, 101, 103, 201, 203])
    #expect(writer.fileDriver.permissions.perm == [.consistentRead, .write, .resize])
    await writer.close()
    #expect(try lockedBytes(path) == [])

    let reader = try await openFileNode(path, underFormat: true, readOnly: true)
    #expect(try lockedBytes(path) == [100, 201, 203])
    await reader.close()

    let inspector = try await openFileNode(
      path, underFormat: true, readOnly: true, forceShare: true)
    #expect(try lockedBytes(path) == [100])
    await inspector.close()

    let unlocked = try await openFileNode(path, extra: ["locking": "off"])
    #expect(!unlocked.fileDriver.isLocking)
    #expect(try lockedBytes(path) == [])
    await unlocked.close()
  }

  @Test("a second user is refused as QEMU refuses it, and a refused open takes no locks")
  func secondUser() async throws {
    let path = try scratch.makeFile("disk.img", size: 1 << 20)
    let writer = try await openFileNode(path, underFormat: true)

    var error = await expectBlockError { _ = try await openFileNode(path, underFormat: true) }
    #expect(error?.code == .resourceTemporarilyUnavailable)
    #expect(error?.message == "Failed to get \"write\" lock" + hint(path))
    error = await expectBlockError {
      _ = try await openFileNode(path, underFormat: true, readOnly: true)
    }
    #expect(error?.message == "Failed to get shared \"write\" lock" + hint(path))
    #expect(try lockedBytes(path) == [100, 101, 103, 201, 203])

    // Sharing everything (qemu-img -U) and not locking at all both work.
    let inspector = try await openFileNode(
      path, underFormat: true, readOnly: true, forceShare: true)
    try await writer.write(at: 0, bytes: pattern(512))
    #expect(try await inspector.read(at: 0, count: 512) == pattern(512))
    await inspector.close()
    let unlocked = try await openFileNode(path, extra: ["locking": "off"])
    await unlocked.close()

    await writer.close()
    let next = try await openFileNode(path, underFormat: true)
    await next.close()
  }

  @Test("permission changes lock and unlock bytes and roll back on conflict")
  func permissionChanges() async throws {
    let path = try scratch.makeFile("disk.img", size: 1 << 20)
    let first = try await openFileNode(path, underFormat: true)
    let writing = first.fileDriver.permissions
    let sharing = ImagePermissions(perm: .consistentRead, shared: .all)
    try await first.fileDriver.setPermissions(sharing)
    #expect(try lockedBytes(path) == [100])

    let second = try await openFileNode(path, underFormat: true)
    let error = await expectBlockError { try await first.fileDriver.setPermissions(writing) }
    #expect(error?.message == "Failed to get \"write\" lock" + hint(path))
    #expect(first.fileDriver.permissions == sharing)
    await second.close()
    #expect(try lockedBytes(path) == [100])

    try await first.fileDriver.setPermissions(writing)
    #expect(try lockedBytes(path) == [100, 101, 103, 201, 203])
    await first.close()
  }

  @Test(
    "qemu-io cannot open a file Spindle holds for writing under a format, except with -U -r",
    .requires("qemu-io"))
  func qemuRefusedBySpindle() async throws {
    let path = try scratch.makeFile("disk.img", size: 1 << 20)
    let writer = try await openFileNode(path, underFormat: true)
    try await writer.write(at: 0, bytes: [UInt8](repeating: 0x5a, count: 512))
    try await writer.flush()

    let refused = try await QEMUTools.run(QEMUTools.qemuIO, ["-c", "read 0 512", path])
    #expect(refused.status != 0)
    #expect(refused.output.contains("Failed to get \"write\" lock" + hint(path)))

    let shared = try await QEMUTools.run(
      QEMUTools.qemuIO, ["-U", "-r", "-f", "raw", "-c", "read -P 0x5a 0 512", path])
    #expect(shared.status == 0, "\(shared.output)")
    #expect(shared.output.contains("read 512/512 bytes at offset 0"))
    #expect(!shared.output.contains("Pattern verification failed"))

    await writer.close()
    let free = try await QEMUTools.run(QEMUTools.qemuIO, ["-f", "raw", "-c", "read 0 512", path])
    #expect(free.status == 0, "\(free.output)")
  }

  @Test(
    "Spindle cannot open under a format a file qemu-io holds, and says what QEMU says",
    .requires("qemu-io"))
  func spindleRefusedByQemu() async throws {
    let path = try scratch.makeFile("disk.img", size: 1 << 20)
    let session = try QemuIOSession(["-f", "raw", path])
    try #require(await session.send("length", until: "1 MiB"), "\(session.transcript)")
    #expect(await session.send("write -P 0x33 0 4096", until: "wrote 4096/4096"))

    // qemu-io shares everything for a raw image but holds "write"; Spindle
    // does not share writing, so it refuses as any QEMU user that does not.
    let error = await expectBlockError { _ = try await openFileNode(path, underFormat: true) }
    let expected = "Failed to get shared \"write\" lock" + hint(path)
    #expect(error?.message == expected)
    if ToolRequirement.isAvailable("qemu-img") {
      // The same situation for QEMU: qemu-img convert does not share writing its source.
      let output = scratch.file("copy.img")
      let qemu = try await QEMUTools.run(
        QEMUTools.qemuImg, ["convert", "-f", "raw", "-O", "raw", path, output])
      #expect(qemu.status != 0)
      #expect(qemu.output.contains("Could not open '\(path)': " + expected))
    }
    // Sharing everything works and sees qemu-io's data.
    let inspector = try await openFileNode(
      path, underFormat: true, readOnly: true, forceShare: true)
    #expect(try await inspector.read(at: 0, count: 4096) == [UInt8](repeating: 0x33, count: 4096))
    await inspector.close()

    #expect(await session.finish() == 0)
    let writer = try await openFileNode(path, underFormat: true)
    await writer.close()
  }

  @Test(
    "Spindle cannot open a qcow2 file that qemu-io holds: Failed to get \"write\" lock",
    .requires("qemu-img", "qemu-io"))
  func spindleRefusedByQemuFormat() async throws {
    let path = scratch.file("disk.qcow2")
    let created = try await QEMUTools.run(QEMUTools.qemuImg, ["create", "-f", "qcow2", path, "1M"])
    #expect(created.status == 0, "\(created.output)")
    let session = try QemuIOSession(["-f", "qcow2", path])
    try #require(await session.send("length", until: "1 MiB"), "\(session.transcript)")
    #expect(try lockedBytes(path) == [100, 101, 103, 201, 203])

    var error = await expectBlockError { _ = try await openFileNode(path, underFormat: true) }
    #expect(error?.code == .resourceTemporarilyUnavailable)
    #expect(error?.message == "Failed to get \"write\" lock" + hint(path))
    error = await expectBlockError {
      _ = try await openFileNode(path, underFormat: true, readOnly: true)
    }
    #expect(error?.message == "Failed to get shared \"write\" lock" + hint(path))
    let inspector = try await openFileNode(
      path, underFormat: true, readOnly: true, forceShare: true)
    await inspector.close()
    #expect(await session.finish() == 0)
  }

  @Test(
    "through the opener, raw images are shared as qemu-io shares them; qcow2 images are not",
    .requires("qemu-img", "qemu-io"))
  func openerPermissionsMatchQemu() async throws {
    // A raw writer holds consistent-read and write and shares everything,
    // exactly the bytes a qemu-io raw writer locks; a second writer is welcome.
    let raw = try scratch.makeFile("disk.raw", size: 1 << 20)
    let rawWriter = try await ImageOpener.open(filename: raw, format: "raw")
    #expect(try lockedBytes(raw) == [100, 101])
    let alongside = try await QEMUTools.run(
      QEMUTools.qemuIO, ["-f", "raw", "-c", "write -P 0x11 512 512", raw])
    #expect(alongside.status == 0, "\(alongside.output)")
    #expect(try await rawWriter.read(at: 512, count: 512) == [UInt8](repeating: 0x11, count: 512))
    await rawWriter.close()

    // And the other way round: qemu-io holds the raw image, Spindle opens it too.
    let session = try QemuIOSession(["-f", "raw", raw])
    try #require(await session.send("length", until: "1 MiB"), "\(session.transcript)")
    let second = try await ImageOpener.open(filename: raw, format: "raw")
    await second.close()
    #expect(await session.finish() == 0)

    // A qcow2 writer does not share writing: qemu-io is refused as by QEMU.
    let qcow2 = scratch.file("disk.qcow2")
    let created = try await QEMUTools.run(
      QEMUTools.qemuImg, ["create", "-f", "qcow2", qcow2, "1M"])
    #expect(created.status == 0, "\(created.output)")
    let qcow2Writer = try await ImageOpener.open(filename: qcow2, format: "qcow2")
    let refused = try await QEMUTools.run(QEMUTools.qemuIO, ["-c", "read 0 512", qcow2])
    #expect(refused.status != 0)
    #expect(refused.output.contains("Failed to get \"write\" lock" + hint(qcow2)))
    let shared = try await QEMUTools.run(
      QEMUTools.qemuIO, ["-U", "-r", "-c", "read 0 512", qcow2])
    #expect(shared.status == 0, "\(shared.output)")
    await qcow2Writer.close()
  }
}
