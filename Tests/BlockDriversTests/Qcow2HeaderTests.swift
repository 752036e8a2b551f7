import BlockCore
import BlockTestSupport
import Foundation
import SystemPackage
import Testing

@testable import BlockDrivers

/// A header field overwritten in a valid image, and the error it must cause.
struct HostileHeader: Sendable, CustomStringConvertible {
  var name: String
  var patches: [(offset: Int, bytes: [UInt8])]
  var code: Errno
  var message: String

  var description: String { name }

  init(_ name: String, _ offset: Int, _ value: UInt64, width: Int, _ code: Errno, _ message: String)
  {
    self.init(name, [(offset, bigEndianBytes(value, width: width))], code, message)
  }

  init(_ name: String, _ patches: [(Int, [UInt8])], _ code: Errno, _ message: String) {
    self.name = name
    self.patches = patches.map { (offset: $0.0, bytes: $0.1) }
    self.code = code
    self.message = message
  }

  /// Cases for a 1 MiB, 64 KiB-cluster v3 image as qemu-img creates it.
  static let all: [HostileHeader] = [
    HostileHeader("version 4", 4, 4, width: 4, .notSupported, "Unsupported qcow2 version 4"),
    HostileHeader(
      "cluster_bits 8", 20, 8, width: 4, .invalidArgument, "Unsupported cluster size: 2^8"),
    HostileHeader(
      "cluster_bits 22", 20, 22, width: 4, .invalidArgument, "Unsupported cluster size: 2^22"),
    HostileHeader(
      "header too short", 100, 100, width: 4, .invalidArgument, "qcow2 header too short"),
    HostileHeader(
      "size past the maximum", 24, 1 << 63, width: 8, .fileTooLarge, "Image is too big"),
    HostileHeader(
      "unaligned L1", 40, 0x30001, width: 8, .invalidArgument, "Active L1 table offset invalid"),
    HostileHeader(
      "L1 past EOF", 40, 0x100000, width: 8, .invalidArgument,
      "Active L1 table lies past the end of the image"),
    HostileHeader(
      "huge l1_size", 36, 0xFFFF_FFFF, width: 4, .fileTooLarge, "Active L1 table too large"),
    HostileHeader("l1_size 0", 36, 0, width: 4, .invalidArgument, "L1 table is too small"),
    HostileHeader(
      "no refcount table", 56, 0, width: 4, .invalidArgument,
      "Image does not contain a reference count table"),
    HostileHeader(
      "huge refcount table", 56, 0x1000, width: 4, .invalidArgument,
      "Reference count table too large"),
    HostileHeader(
      "refcount table past EOF", 48, 0x1_0000_0000, width: 8, .invalidArgument,
      "Reference count table lies past the end of the image"),
    HostileHeader(
      "refcount_order 7", 96, 7, width: 4, .invalidArgument,
      "Reference count entry width too large; may not exceed 64 bits"),
    HostileHeader(
      "too many snapshots", 60, 70000, width: 4, .invalidArgument, "Snapshot table too large"),
    HostileHeader(
      "backing name of 1024 bytes",
      [(8, bigEndianBytes(0x1000, width: 8)), (16, bigEndianBytes(1024, width: 4))],
      .invalidArgument, "Backing file name too long"),
    HostileHeader(
      "backing offset past the cluster", 8, 0x20000, width: 8, .invalidArgument,
      "Invalid backing file offset"),
    HostileHeader(
      "AES encryption", 32, 1, width: 4, .notSupported,
      "qcow2: encrypted images (aes) are not supported"),
    HostileHeader(
      "unknown encryption", 32, 3, width: 4, .invalidArgument, "Unsupported encryption method: 3"),
    // Every bit QEMU 7.2 names is supported: the image's feature-name table
    // (from 0x78, 48 bytes an entry) is patched to name bit 5 instead of 4.
    HostileHeader(
      "named incompatible bit", [(0x139, [5]), (72, bigEndianBytes(1 << 5, width: 8))],
      .notSupported, "Unsupported qcow2 feature(s): extended L2 entries"),
    HostileHeader(
      "unnamed incompatible bit", 72, 1 << 40, width: 8, .notSupported,
      "Unsupported qcow2 feature(s): Unknown incompatible feature: 10000000000"),
    HostileHeader(
      "named and unnamed bits", [(0x139, [5]), (72, bigEndianBytes(1 << 40 | 1 << 5, width: 8))],
      .notSupported,
      "Unsupported qcow2 feature(s): extended L2 entries, Unknown incompatible feature: 10000000000"
    ),
    HostileHeader(
      "zstd without the compression bit", 104, 1, width: 1, .invalidArgument,
      "qcow2: Compression type incompatible feature bit must be set"),
    HostileHeader(
      "compression bit with zlib", 72, 1 << 3, width: 8, .invalidArgument,
      "qcow2: Compression type incompatible feature bit must not be set"),
    HostileHeader(
      "unknown compression type",
      [(72, bigEndianBytes(1 << 3, width: 8)), (104, [2])], .notSupported,
      "qcow2: unknown compression type: 2"),
    HostileHeader(
      "header extension too large", 0x74, 0xFFFF, width: 4, .invalidArgument,
      "Header extension too large"),
  ]
}

/// Header parsing and validation: hostile fields fail the open with QEMU's
/// message and no crash or huge allocation; corrupt tables fail reads.
@Suite(
  "qcow2 header validation",
  .requires("qemu-img", "qemu-io"))
@BlockActor
struct Qcow2HeaderTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  func makeImage(_ options: [String] = []) async throws -> String {
    let path = scratch.file("disk.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2"] + options + [path, "1M"])
    return path
  }

  @Test("a hostile header fails the open", arguments: HostileHeader.all)
  func hostile(_ hostile: HostileHeader) async throws {
    let path = try await makeImage()
    // The unpatched image opens: the failure is the patch's.
    await (try await openQcow2(path)).close()
    for patch in hostile.patches { try patchFile(path, at: patch.offset, patch.bytes) }
    let error = await expectBlockError {
      let node = try await ImageOpener.open(
        filename: path, format: "qcow2", context: OpenContext(node: NodeOptions(readOnly: true)))
      await node.close()
    }
    #expect(error?.code == hostile.code)
    #expect(error?.message == hostile.message)
  }

  @Test("a file too short for a header reads as zero-padded, as in QEMU")
  func truncated() async throws {
    // Node lengths are whole sectors, so the header's missing bytes read as
    // zeroes and the cluster size is the first field found invalid; qemu-img
    // 7.2 says exactly this for the same file.
    let path = try scratch.makeFile("short.qcow2", bytes: [0x51, 0x46, 0x49, 0xFB, 0, 0, 0, 3])
    let error = await expectBlockError { _ = try await openQcow2(path) }
    #expect(error?.message == "Unsupported cluster size: 2^0")
  }

  @Test("a LUKS-encrypted image is refused")
  func luks() async throws {
    let path: String
    do {
      path = try await makeImage([
        "--object", "secret,id=sec0,data=secret", "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
      ])
    } catch {
      // qemu-img's PBKDF benchmark fails on a loaded machine ("Unable to get
      // accurate CPU usage"): mark a plain image as LUKS-encrypted instead.
      path = try await makeImage()
      try patchFile(path, at: 32, bigEndianBytes(2, width: 4))
    }
    let error = await expectBlockError { _ = try await openQcow2(path) }
    #expect(error?.code == BlockError.notSupportedCode)
    #expect(error?.message == "qcow2: encrypted images (luks) are not supported")
  }

  @Test("the corrupt bit allows read-only opens only")
  func corruptBit() async throws {
    let path = try await makeImage()
    try patchFile(path, at: 72, bigEndianBytes(Qcow2Feature.corrupt, width: 8))
    let error = await expectBlockError { _ = try await openQcow2(path, readOnly: false) }
    #expect(error?.code == .permissionDenied)
    #expect(error?.message == "qcow2: Image is corrupt; cannot be opened read/write")
    let node = try await openQcow2(path)
    #expect(try await node.read(at: 0, count: 512) == [UInt8](repeating: 0, count: 512))
    await node.close()
  }

  @Test("unaligned L2 and data offsets fail reads with EIO")
  func corruptTables() async throws {
    let path = try await makeImage()
    try await QcowTools.io(path, ["write -P 0x5a 0 4096", "write -P 0x5b 512K 4096"])
    // qemu-img put the L1 table at 0x30000, the L2 table at 0x40000 and the data
    // clusters at 0x50000 and 0x60000.
    let l1Entry = try contents(of: path)[0x30000..<0x30008]
    #expect(Array(l1Entry) == bigEndianBytes(1 << 63 | 0x40000, width: 8))
    try patchFile(path, at: 0x40000 + 8 * 8, bigEndianBytes(1 << 63 | 0x60200, width: 8))
    var node = try await openQcow2(path)
    #expect(try await node.read(at: 0, count: 4096) == [UInt8](repeating: 0x5a, count: 4096))
    var error = await expectBlockError { _ = try await node.read(at: 512 << 10, count: 512) }
    #expect(error?.code == .ioError)
    #expect(error?.message.hasPrefix("Image is corrupt: Cluster allocation offset 0x60200") == true)
    await node.close()

    try patchFile(path, at: 0x30000, bigEndianBytes(1 << 63 | 0x40200, width: 8))
    node = try await openQcow2(path)
    error = await expectBlockError { _ = try await node.read(at: 0, count: 512) }
    #expect(error?.code == .ioError)
    #expect(error?.message.hasPrefix("Image is corrupt: L2 table offset 0x40200") == true)
    await node.close()
  }

  @Test("header fields and extensions parse as written")
  func fields() async throws {
    let base = scratch.file("base.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", base, "1M"])
    let path = scratch.file("overlay.qcow2")
    try await QcowTools.img([
      "create", "-q", "-f", "qcow2", "-o", "cluster_size=8192,lazy_refcounts=on", "-b",
      "base.qcow2", "-F", "qcow2", path, "3M",
    ])
    let bytes = try contents(of: path)
    let header = try Qcow2Header.parse(Array(bytes.prefix(4096)), fileLength: Int64(bytes.count))
    #expect(header.version == 3)
    #expect(header.clusterSize == 8192)
    #expect(header.size == 3 << 20)
    #expect(header.headerLength == 112)
    #expect(header.backingFile == "base.qcow2")
    #expect(header.backingFormat == "qcow2")
    #expect(header.compatibleFeatures == Qcow2Feature.lazyRefcounts)
    #expect(header.featureNames == Qcow2Feature.nameTable)
    #expect(
      header.extensions.map(\.type) == [
        Qcow2HeaderExtension.backingFormat, Qcow2HeaderExtension.featureNameTable,
      ])
  }
}
