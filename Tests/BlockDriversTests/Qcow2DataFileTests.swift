import BlockCore
import BlockTestSupport
import Foundation
import Testing

@testable import BlockDrivers

/// Images with an external data file (`data_file`, `data_file_raw`): guest
/// data at its own offset in the data file, read, written and created as
/// QEMU does.
@Suite(
  "qcow2 external data files",
  .requires("qemu-img", "qemu-io"))
@BlockActor
struct Qcow2DataFileTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  /// A 4 MiB image made by qemu-img with the data file `data` (absolute, so
  /// that QEMU, which resolves data file names against its working
  /// directory, finds it).
  func makeImage(_ name: String, data: String, raw: Bool, extra: String = "") async throws
    -> String
  {
    let path = scratch.file(name)
    try await QcowTools.img([
      "create", "-q", "-f", "qcow2", "-o",
      "data_file=\(scratch.file(data)),data_file_raw=\(raw ? "on" : "off")\(extra)", path, "4M",
    ])
    return path
  }

  @Test(
    "images qemu-io wrote read and map as QEMU's",
    arguments: [(false, ""), (true, ""), (false, ",extended_l2=on"), (true, ",extended_l2=on")])
  func readInterop(raw: Bool, extra: String) async throws {
    let path = try await makeImage("disk.qcow2", data: "disk.data", raw: raw, extra: extra)
    try await QcowTools.io(
      path,
      [
        "write -P 0x11 0 4096", "write -P 0x22 65000 70000", "write -P 0x33 1M 1M",
        "write -z 1200K 128K", "write -z -u 3M 64K", "discard 1536K 64K",
        "write -P 0x44 4193792 512",
      ])
    try await Qcow2ReadTests().expectSameAsQEMU(path)
    let node = try await openQcow2(path)
    #expect(node.child(.data) != nil)
    let expected = try await QcowTools.guestBytes(path, scratch: scratch)
    try await Qcow2FeatureTests.expectGridReads(node, expected: expected)
    // Data sits at its guest offset in the data file.
    let status = try await node.blockStatus(offset: 1 << 20, bytes: 4096, wantZero: true)
    #expect(status.mapOffset == 1 << 20)
    #expect(status.file === node.child(.data))
    await node.close()
  }

  @Test(
    "mixed requests end as qemu-io's, and a raw data file stays the guest disk",
    arguments: [(false, ""), (true, ""), (false, ",extended_l2=on"), (true, ",extended_l2=on")])
  func writeInterop(raw: Bool, extra: String) async throws {
    let spindle = try await makeImage(
      "spindle.qcow2", data: "spindle.data", raw: raw, extra: extra)
    let qemu = try await makeImage("qemu.qcow2", data: "qemu.data", raw: raw, extra: extra)
    let ops = GuestOp.mixed + [.write(0, 70000, 0x5a), .zero(65536, 65536, unmap: true)]
    try await Qcow2WriteTests().expectSameResult(ops, spindle: spindle, qemu: qemu)
    let guest = try await QcowTools.guestBytes(spindle, scratch: scratch)
    if raw {
      #expect(try contents(of: scratch.file("spindle.data")) == guest)
    }
    // The image file holds metadata only: no data cluster is counted there.
    let check = try await QcowTools.img(["check", spindle])
    #expect(check.contains("No errors were found"))
    #expect(try contents(of: spindle).count <= 6 * 65536)
  }

  @Test(
    "writes over a backing file copy the rest of the cluster into the data file",
    arguments: ["", ",extended_l2=on"])
  func overBacking(extra: String) async throws {
    let base = scratch.file("base.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", base, "4M"])
    try await QcowTools.io(base, ["write -P 0xab 0 4M"])
    for name in ["spindle", "qemu"] {
      try await QcowTools.img([
        "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", "-o",
        "data_file=\(scratch.file("\(name).data"))\(extra)", scratch.file("\(name).qcow2"), "4M",
      ])
    }
    try await Qcow2WriteTests().expectSameResult(
      GuestOp.mixed, spindle: scratch.file("spindle.qcow2"), qemu: scratch.file("qemu.qcow2"))
  }

  @Test(
    "create gives qemu-img's image and data file",
    arguments: [(false, "3M"), (true, "3M"), (true, "2G"), (false, "2G")])
  func create(raw: Bool, size: String) async throws {
    let dataName = scratch.file("data.raw")
    let qemuImage = scratch.file("qemu.qcow2")
    try await QcowTools.img([
      "create", "-q", "-f", "qcow2", "-o",
      "data_file=\(dataName),data_file_raw=\(raw ? "on" : "off")",
      qemuImage, size,
    ])
    let qemuData = scratch.file("qemu-data.raw")
    try FileManager.default.moveItem(atPath: dataName, toPath: qemuData)
    let spindleImage = scratch.file("spindle.qcow2")
    var options = Qcow2CreateOptions(size: Int64(parseSize(size)!))
    options.dataFile = dataName
    options.dataFileRaw = raw
    try await Qcow2Create.create(at: spindleImage, options: options)
    try Qcow2FeatureTests.expectSameFiles(spindleImage, qemuImage)
    #expect(
      try FileManager.default.attributesOfItem(atPath: dataName)[.size] as? Int64
        == FileManager.default.attributesOfItem(atPath: qemuData)[.size] as? Int64)
    let check = try await QcowTools.img(["check", spindleImage])
    #expect(check.contains("No errors were found"))
  }

  @Test("a relative data file name is found next to the image; data-file overrides it")
  func relativeName() async throws {
    try FileManager.default.createDirectory(
      atPath: scratch.file("images"), withIntermediateDirectories: true)
    let path = scratch.file("images/disk.qcow2")
    var options = Qcow2CreateOptions(size: 1 << 20)
    options.dataFile = "disk.data"
    try await Qcow2Create.create(at: path, options: options)
    #expect(FileManager.default.fileExists(atPath: scratch.file("images/disk.data")))
    let node = try await ImageOpener.open(filename: path)
    try await node.write(at: 4096, bytes: [UInt8](repeating: 0x61, count: 512))
    await node.close()
    let data = try contents(of: scratch.file("images/disk.data"))
    #expect(Array(data[4096..<4608]) == [UInt8](repeating: 0x61, count: 512))

    // The data-file option names another data file.
    let other = try scratch.makeFile("other.data", bytes: [UInt8](repeating: 0x62, count: 1 << 20))
    let overridden = try await ImageOpener.open(
      filename: path, options: DriverOptions(["data-file.filename": other]),
      context: OpenContext(node: NodeOptions(readOnly: true)))
    #expect(try await overridden.read(at: 4096, count: 512) == [UInt8](repeating: 0x62, count: 512))
    // Unallocated clusters read as zeroes whatever the data file holds there.
    #expect(try await overridden.read(at: 1 << 19, count: 512) == [UInt8](repeating: 0, count: 512))
    await overridden.close()
  }

  @Test("data-file errors: missing file, option without the feature, raw bit alone")
  func errors() async throws {
    let path = try await makeImage("disk.qcow2", data: "gone.data", raw: false)
    try FileManager.default.removeItem(atPath: scratch.file("gone.data"))
    let missing = await expectBlockError { _ = try await openQcow2(path) }
    #expect(missing?.message.contains("gone.data") == true)

    let plain = scratch.file("plain.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", plain, "1M"])
    let option = await expectBlockError {
      _ = try await ImageOpener.open(
        filename: plain, options: DriverOptions(["data-file": scratch.file("x.data")]))
    }
    #expect(option?.message == "'data-file' can only be set for images with an external data file")
    try patchFile(plain, at: 88, bigEndianBytes(Qcow2Feature.rawExternalData, width: 8))
    let rawBit = await expectBlockError { _ = try await openQcow2(plain) }
    #expect(rawBit?.message == "data-file-raw requires a data file")

    // No name in the header and no option.
    let unnamed = scratch.file("unnamed.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", unnamed, "1M"])
    try patchFile(unnamed, at: 72, bigEndianBytes(Qcow2Feature.externalDataFile, width: 8))
    let required = await expectBlockError { _ = try await openQcow2(unnamed) }
    #expect(required?.message == "'data-file' is required for this image")
  }

  @Test("an L2 entry pointing elsewhere than its guest offset fails reads with EIO")
  func mismatchedOffset() async throws {
    let path = try await makeImage("disk.qcow2", data: "disk.data", raw: false)
    try await QcowTools.io(path, ["write -P 1 0 4096"])
    let node = try await openQcow2(path)
    let driver = try #require(node.driver as? Qcow2Driver)
    let l2Offset = Int(driver.l1Table[0] & Qcow2Entry.offsetMask)
    await node.close()
    try patchFile(path, at: l2Offset, bigEndianBytes(Qcow2Entry.copied | 65536, width: 8))
    let reopened = try await openQcow2(path)
    let error = await expectBlockError { _ = try await reopened.read(at: 0, count: 512) }
    #expect(error?.code == .ioError)
    #expect(error?.message.contains("does not match guest cluster offset") == true)
    await reopened.close()
  }

  @Test("compressed writes are refused, as QEMU refuses them")
  func compressedRefused() async throws {
    let path = try await makeImage("disk.qcow2", data: "disk.data", raw: false)
    let node = try await ImageOpener.open(filename: path)
    let error = await expectBlockError {
      try await node.writeCompressed(
        at: 0, from: Qcow2FeatureTests.vector([UInt8](repeating: 1, count: 65536)))
    }
    #expect(error?.code == BlockError.notSupportedCode)
    await node.close()
  }

  @Test("growing the disk grows the data file, as qemu-img resize does")
  func resize() async throws {
    let path = try await makeImage("disk.qcow2", data: "disk.data", raw: false)
    let node = try await ImageOpener.open(filename: path)
    try await node.truncate(to: 6 << 20)
    try await node.write(at: (6 << 20) - 512, bytes: [UInt8](repeating: 3, count: 512))
    await node.close()
    let size = try FileManager.default.attributesOfItem(atPath: scratch.file("disk.data"))[.size]
    #expect(size as? Int64 == 6 << 20)
    let guest = try await QcowTools.guestBytes(path, scratch: scratch)
    #expect(guest.count == 6 << 20 && guest.last == 3)
  }

  @Test("the create options are checked as QEMU checks them")
  func invalidOptions() async throws {
    var v2 = Qcow2CreateOptions(size: 1 << 20)
    v2.compat = "0.10"
    v2.dataFile = "d.raw"
    var rawOnly = Qcow2CreateOptions(size: 1 << 20)
    rawOnly.dataFileRaw = true
    var rawBacking = Qcow2CreateOptions(size: 1 << 20)
    rawBacking.dataFile = "d.raw"
    rawBacking.dataFileRaw = true
    rawBacking.backingFile = "base.qcow2"
    let cases = [
      (
        v2,
        "External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)"
      ),
      (rawOnly, "data-file-raw requires data-file"),
      (rawBacking, "Backing file and data-file-raw cannot be used at the same time"),
    ]
    for (options, message) in cases {
      let error = await expectBlockError {
        try await Qcow2Create.create(at: scratch.file("bad.qcow2"), options: options)
      }
      #expect(error?.message == message)
    }
  }
}
