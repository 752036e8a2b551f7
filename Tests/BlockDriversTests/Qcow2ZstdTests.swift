import BlockCore
import BlockTestSupport
import Foundation
import Testing

@testable import BlockDrivers

/// zstd-compressed images (compression_type=zstd): read as QEMU reads them,
/// compressed writes byte for byte as qemu-io's.
@Suite(
  "qcow2 zstd",
  .requires("qemu-img", "qemu-io"))
@BlockActor
struct Qcow2ZstdTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  @Test(
    "images qemu-img convert -c made with zstd read as QEMU reads them", arguments: [4096, 65536])
  func convertCompressed(clusterSize: Int) async throws {
    let raw = try scratch.makeFile(
      "source.raw", bytes: Qcow2FeatureTests.mixedContent(1 << 20) + pattern(100_000, seed: 3))
    let path = scratch.file("zstd.qcow2")
    try await QcowTools.img([
      "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd,cluster_size=\(clusterSize)",
      "-f", "raw", raw, path,
    ])
    try await Qcow2ReadTests().expectSameAsQEMU(path)
    let node = try await openQcow2(path)
    let driver = try #require(node.driver as? Qcow2Driver)
    #expect(driver.header.compression == .zstd)
    let expected = try contents(of: raw)
    try await Qcow2FeatureTests.expectGridReads(node, expected: expected)
    await node.close()
  }

  @Test("compressed writes give the same file as qemu-io write -c", arguments: [65536, 4096, 512])
  func compressedWrites(clusterSize: Int) async throws {
    let cs = clusterSize
    let text = Qcow2FeatureTests.mixedContent(4 * cs).prefix(cs / 4).cycled(to: cs)
    var seed: UInt64 = 7
    let noise = (0..<cs).map { _ in
      seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      return UInt8(truncatingIfNeeded: seed >> 33)
    }
    let textFile = try scratch.makeFile("text.bin", bytes: text)
    let noiseFile = try scratch.makeFile("noise.bin", bytes: noise)
    let spindle = scratch.file("spindle.qcow2")
    let qemu = scratch.file("qemu.qcow2")
    for path in [spindle, qemu] {
      try await QcowTools.img([
        "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd,cluster_size=\(cs)", path, "1M",
      ])
    }
    let node = try await ImageOpener.open(filename: spindle)
    try await node.writeCompressed(at: 0, from: Qcow2FeatureTests.vector(text))
    try await node.writeCompressed(
      at: Int64(cs), from: Qcow2FeatureTests.vector([UInt8](repeating: 0x41, count: cs)))
    try await node.writeCompressed(at: Int64(2 * cs), from: Qcow2FeatureTests.vector(noise))
    try await node.writeCompressed(at: Int64(5 * cs), from: Qcow2FeatureTests.vector(text))
    try await node.write(at: Int64(cs) + 100, bytes: [UInt8](repeating: 0x55, count: 100))
    #expect(try await node.read(at: Int64(5 * cs), count: cs) == text)
    await node.close()
    try await QcowTools.io(
      qemu,
      [
        "write -c -s \(textFile) 0 \(cs)", "write -c -P 0x41 \(cs) \(cs)",
        "write -c -s \(noiseFile) \(2 * cs) \(cs)", "write -c -s \(textFile) \(5 * cs) \(cs)",
        "write -P 0x55 \(cs + 100) 100",
      ])
    try Qcow2FeatureTests.expectSameFiles(spindle, qemu)
    let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", spindle])
    #expect(check.status == 0, "\(check.output)")
  }

  @Test("mixed requests over zstd-compressed clusters end as qemu-io's")
  func mixedOverCompressed() async throws {
    let raw = try scratch.makeFile("source.raw", bytes: Qcow2FeatureTests.mixedContent(4 << 20))
    let spindle = scratch.file("spindle.qcow2")
    let qemu = scratch.file("qemu.qcow2")
    try await QcowTools.img([
      "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", "-f", "raw", raw, spindle,
    ])
    try FileManager.default.copyItem(atPath: spindle, toPath: qemu)
    try await Qcow2WriteTests().expectSameResult(GuestOp.mixed, spindle: spindle, qemu: qemu)
  }

  @Test("a corrupt zstd cluster fails the read with EIO")
  func corruptCluster() async throws {
    let raw = try scratch.makeFile("source.raw", bytes: Qcow2FeatureTests.mixedContent(65536))
    let path = scratch.file("zstd.qcow2")
    try await QcowTools.img([
      "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", "-f", "raw", raw, path,
    ])
    let map = try await QcowTools.map(path)
    #expect(map.first?.data == true && map.first?.offset == nil)
    // The compressed data follows the L2 table: overwrite its first bytes.
    let fileBytes = try contents(of: path)
    let magic: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD]
    let frame = try #require(
      (0..<fileBytes.count - 4).first { Array(fileBytes[$0..<$0 + 4]) == magic })
    try patchFile(path, at: frame, [0xde, 0xad, 0xbe, 0xef])
    let node = try await openQcow2(path)
    let error = await expectBlockError { _ = try await node.read(at: 0, count: 512) }
    #expect(error?.code == .ioError)
    await node.close()
  }
}

extension Collection where Element == UInt8 {
  /// The bytes repeated until there are `count` of them.
  fileprivate func cycled(to count: Int) -> [UInt8] {
    var result: [UInt8] = []
    while result.count < count { result += self }
    return Array(result.prefix(count))
  }
}
