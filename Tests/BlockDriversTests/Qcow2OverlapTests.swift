import BlockCore
import BlockDrivers
import BlockTestSupport
import Foundation
import Testing

/// Writes that would land on metadata (QEMU's overlap checks): refused with
/// EIO, the image marked corrupt as QEMU marks it, the node unusable after.
@Suite(
  "qcow2 metadata overlap",
  .requires("qemu-img", "qemu-io"))
@BlockActor
struct Qcow2OverlapTests {
  /// Collects driver messages.
  final class Messages: @unchecked Sendable {
    var lines: [String] = []
  }

  /// Opens `path` writable, its driver messages going to `messages`.
  private func open(_ path: String, _ messages: Messages, options: [String: String] = [:])
    async throws -> BlockNode
  {
    var context = OpenContext()
    context.diagnostics = { messages.lines.append($0) }
    var all = options
    all["driver"] = "qcow2"
    all["file.filename"] = path
    return try await ImageOpener.open(
      filename: nil, options: DriverOptions(all), context: context)
  }

  @Test("an L2 entry pointing at the refcount table: EIO, corrupt bit, then no medium")
  func refcountTableOverlap() async throws {
    let scratch = try ScratchDirectory()
    let path = scratch.file("disk.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", path, "1M"])
    try await QcowTools.io(path, ["write -P 0x5a 0 4096"])
    try patchFile(path, at: 0x40000, bigEndianBytes(1 << 63 | 0x10000, width: 8))
    var expected = try contents(of: path)
    expected[79] |= UInt8(Qcow2Feature.corrupt)
    let messages = Messages()
    let node = try await open(path, messages)
    let error = await expectBlockError { try await node.write(at: 100, bytes: [1, 2, 3]) }
    #expect(error?.code == .ioError)
    #expect(
      messages.lines == [
        "qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with refcount table); further corruption events will be suppressed\n"
      ])
    let later = await expectBlockError { _ = try await node.read(at: 0, count: 512) }
    #expect(later?.code == BlockError.noMediumCode)
    await node.close()
    #expect(try contents(of: path) == expected)
    let reopen = await expectBlockError { _ = try await self.open(path, messages) }
    #expect(reopen?.message == "qcow2: Image is corrupt; cannot be opened read/write")
  }

  @Test("a write onto a snapshot's L1 table is refused as qemu-io refuses it")
  func inactiveL1Overlap() async throws {
    let scratch = try ScratchDirectory()
    let qemuPath = scratch.file("q.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", qemuPath, "1M"])
    try await QcowTools.io(qemuPath, ["write -P 0x5a 0 4096"])
    _ = try await QEMUTools.run(QEMUTools.qemuImg, ["snapshot", "-c", "one", qemuPath])
    let image = try contents(of: qemuPath)
    let snapshots = Int(image.prefix(72).suffix(8).reduce(0) { $0 << 8 | UInt64($1) })
    let snapshotL1 = image[snapshots..<snapshots + 8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    // The active L1 entry still points at the (now shared) L2 table at 0x40000.
    try patchFile(qemuPath, at: 0x40000, bigEndianBytes(1 << 63 | snapshotL1, width: 8))
    let spindlePath = scratch.file("s.qcow2")
    try Data(try contents(of: qemuPath)).write(to: URL(fileURLWithPath: spindlePath))

    let qemu = try await QEMUTools.run(QEMUTools.qemuIO, ["-c", "write 0 512", qemuPath])
    let messages = Messages()
    let node = try await open(spindlePath, messages)
    let error = await expectBlockError { try await node.write(at: 0, bytes: [1, 2, 3]) }
    await node.close()
    #expect(error?.code == .ioError)
    let message = try #require(messages.lines.first)
    #expect(message.contains("overlaps with inactive L1 table"))
    #expect(qemu.output.contains(message))
    // The same header (corrupt bit set). QEMU's refcount cache is write-back
    // and never flushed once the node is unusable, so its refcount blocks can
    // lag behind Spindle's write-through ones: only the header is compared.
    #expect(try contents(of: qemuPath).prefix(65536) == contents(of: spindlePath).prefix(65536))
  }

  @Test(
    "overlap-check options",
    arguments: [
      (["overlap-check": "none"], false),
      (["overlap-check": "constant"], true),
      (["overlap-check.template": "none", "overlap-check.refcount-table": "on"], true),
      (["overlap-check.refcount-table": "off"], false),
    ])
  func options(_ options: [String: String], refused: Bool) async throws {
    let scratch = try ScratchDirectory()
    let path = scratch.file("disk.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", path, "1M"])
    try await QcowTools.io(path, ["write -P 0x5a 0 4096"])
    try patchFile(path, at: 0x40000, bigEndianBytes(1 << 63 | 0x10000, width: 8))
    let messages = Messages()
    let node = try await open(path, messages, options: options)
    // Writes the refcount table's own first entry back unchanged.
    let first = try contents(of: path)[0x10000..<0x10008]
    do {
      try await node.write(at: 0, bytes: Array(first))
      #expect(!refused)
    } catch let error as BlockError {
      #expect(refused)
      #expect(error.code == .ioError)
    }
    await node.close()
  }

  @Test("bad overlap-check values are refused with QEMU's messages")
  func badOptions() async throws {
    let scratch = try ScratchDirectory()
    let path = scratch.file("disk.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", path, "1M"])
    let messages = Messages()
    let bad = await expectBlockError {
      _ = try await self.open(path, messages, options: ["overlap-check": "x"])
    }
    #expect(
      bad?.message
        == "Unsupported value 'x' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all"
    )
    let flag = await expectBlockError {
      _ = try await self.open(path, messages, options: ["overlap-check.active-l2": "maybe"])
    }
    #expect(flag?.message == "Parameter 'overlap-check.active-l2' expects 'on' or 'off'")
  }

  @Test("refcount updates landing on the L1 table are refused before they damage it")
  func refcountBlockOverlap() async throws {
    let scratch = try ScratchDirectory()
    let qemuPath = scratch.file("q.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", qemuPath, "1M"])
    try await QcowTools.io(qemuPath, ["write -P 1 0 64k"])
    // The refcount table's first entry now claims the L1 table (0x30000).
    try patchFile(qemuPath, at: 0x10000, bigEndianBytes(0x30000, width: 8))
    let spindlePath = scratch.file("s.qcow2")
    try Data(try contents(of: qemuPath)).write(to: URL(fileURLWithPath: spindlePath))

    let qemu = try await QEMUTools.run(QEMUTools.qemuIO, ["-c", "write 64k 64k", qemuPath])
    let messages = Messages()
    let node = try await open(spindlePath, messages)
    let error = await expectBlockError { try await node.write(at: 65536, bytes: [1]) }
    await node.close()
    #expect(error?.code == .ioError)
    // The refcounts claim the refcount table's cluster is free: QEMU allocates
    // it and its overlap check catches the data write; Spindle's allocator
    // refuses the cluster through the same check. Either way the message is
    // the same and nothing but the corrupt bit changes.
    let prefix = "qcow2: Marking image as corrupt: Preventing invalid write on metadata"
    #expect(qemu.output.hasPrefix(prefix))
    #expect(messages.lines.first?.hasPrefix(prefix) == true)
    #expect(messages.lines.first.map { qemu.output.hasPrefix($0) } == true)
    #expect(try contents(of: qemuPath) == contents(of: spindlePath))
  }

  @Test("a new L1 table landing on an L2 table is refused as qemu-img refuses it")
  func l1GrowthOverlap() async throws {
    let scratch = try ScratchDirectory()
    let qemuPath = scratch.file("q.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", qemuPath, "1M"])
    try await QcowTools.io(qemuPath, ["write -P 1 0 64k"])
    // The L2 table's cluster (4) counts as free: the new L1 table goes there.
    try patchFile(qemuPath, at: 0x20008, [0, 0])
    let spindlePath = scratch.file("s.qcow2")
    try Data(try contents(of: qemuPath)).write(to: URL(fileURLWithPath: spindlePath))
    let qemu = try await QEMUTools.run(QEMUTools.qemuImg, ["resize", qemuPath, "1T"])
    let messages = Messages()
    let node = try await open(spindlePath, messages)
    let error = await expectBlockError { try await node.truncate(to: 1 << 40, exact: false) }
    await node.close()
    #expect(qemu.output == messages.lines.joined() + "qemu-img: \(error?.description ?? "")\n")
    #expect(try contents(of: qemuPath) == contents(of: spindlePath))
  }

  @Test("a shrink whose new L2 table lands on the L1 table fails as qemu-img's does")
  func shrinkOverlap() async throws {
    let scratch = try ScratchDirectory()
    let qemuPath = scratch.file("q.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", qemuPath, "1M"])
    try await QcowTools.io(qemuPath, ["write -P 1 0 1M"])
    // The L1 table's cluster (3) counts as free and its entry lost COPIED:
    // the discard copies the L2 table there.
    try patchFile(qemuPath, at: 0x20006, [0, 0])
    try patchFile(qemuPath, at: 0x30000, [0])
    let spindlePath = scratch.file("s.qcow2")
    try Data(try contents(of: qemuPath)).write(to: URL(fileURLWithPath: spindlePath))
    let qemu = try await QEMUTools.run(
      QEMUTools.qemuImg, ["resize", "--shrink", qemuPath, "512k"])
    let messages = Messages()
    let node = try await open(spindlePath, messages)
    let error = await expectBlockError { try await node.truncate(to: 512 << 10, exact: false) }
    await node.close()
    #expect(qemu.output == messages.lines.joined() + "qemu-img: \(error?.description ?? "")\n")
    #expect(try contents(of: qemuPath) == contents(of: spindlePath))
  }
}
