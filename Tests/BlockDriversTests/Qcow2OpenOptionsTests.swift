import BlockCore
import BlockTestSupport
import Foundation
import Testing

@testable import BlockDrivers

/// qcow2 runtime options: cache sizes and the cleaning interval (QEMU's
/// `read_cache_sizes` checks, compared with qemu-io's messages), discard
/// passthrough, and `backing: null`.
@Suite(
  "qcow2 open options",
  .requires("qemu-img", "qemu-io"))
@BlockActor
struct Qcow2OpenOptionsTests {
  nonisolated static let optionSets: [String] = [
    "cache-size=1M,l2-cache-size=512k,refcount-cache-size=256k",
    "cache-size=1M,l2-cache-size=2M", "cache-size=1M,refcount-cache-size=2M",
    "l2-cache-size=abc", "refcount-cache-size=-1", "cache-clean-interval=5000000000",
    "cache-clean-interval=-1", "cache-clean-interval=x", "l2-cache-entry-size=100",
    "l2-cache-entry-size=1M", "pass-discard-request=maybe", "pass-discard-other=2",
    "refcount-cache-size=1E", "backing=null", "cache-size=0", "l2-cache-size=1k",
    "l2-cache-size=0,l2-cache-entry-size=512", "cache-clean-interval=0,pass-discard-snapshot=off",
    "lazy-refcounts=on", "lazy-refcounts=x",
  ]

  /// The options as a flat dictionary.
  private func dictionary(_ text: String) -> [String: String] {
    var result: [String: String] = [:]
    for pair in text.split(separator: ",") {
      let parts = pair.split(separator: "=", maxSplits: 1)
      result[String(parts[0])] = String(parts[1])
    }
    return result
  }

  @Test("open errors are qemu-io's", arguments: optionSets)
  func sameErrors(_ text: String) async throws {
    let scratch = try ScratchDirectory()
    let path = scratch.file("disk.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", path, "1M"])
    let qemu = try await QEMUTools.run(
      QEMUTools.qemuIO,
      ["--image-opts", "-c", "read 0 512", "driver=qcow2,file.filename=\(path),\(text)"])
    var options = DriverOptions(dictionary(text))
    options["driver"] = "qcow2"
    options["file.filename"] = path
    do {
      let node = try await ImageOpener.open(filename: nil, options: options)
      await node.close()
      #expect(qemu.status == 0, "qemu-io refused: \(qemu.output)")
    } catch let error as BlockError {
      #expect(qemu.output == "qemu-io: can't open: \(error.message)\n")
    }
  }

  @Test(
    "L2 cache capacity follows QEMU's sizes",
    arguments: [
      // (disk size, options, tables): QEMU caps the L2 cache at what covers
      // the disk (8 bytes per cluster, rounded to clusters) and 32 MiB, and
      // gives cache-size to L2 first, keeping 4 clusters for refcounts.
      (Int64(1) << 20, "", 2), (Int64(64) << 30, "", 128), (Int64(1) << 30, "", 2),
      (Int64(64) << 30, "l2-cache-size=1M", 16), (Int64(64) << 30, "cache-size=3M", 44),
      (Int64(8) << 30, "cache-size=40M", 16),
    ])
  func l2Capacity(_ size: Int64, _ text: String, _ tables: Int) async throws {
    let scratch = try ScratchDirectory()
    let path = scratch.file("disk.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", path, String(size)])
    var options = DriverOptions(text.isEmpty ? [:] : dictionary(text))
    options["driver"] = "qcow2"
    options["file.filename"] = path
    let node = try await ImageOpener.open(filename: nil, options: options)
    let driver = try #require(node.driver as? Qcow2Driver)
    #expect(driver.l2Cache.capacity == tables)
    await node.close()
  }

  @Test("unused L2 tables leave the cache at a cleaning")
  func cleaning() {
    var cache = Qcow2L2Cache(capacity: 4)
    cache.insert(Qcow2L2Table(words: [1]), at: 0x10000)
    cache.insert(Qcow2L2Table(words: [2]), at: 0x20000)
    let mark = cache.useClock
    _ = cache.table(at: 0x20000)
    cache.dropUnused(since: mark)
    #expect(cache.table(at: 0x10000) == nil)
    #expect(cache.table(at: 0x20000)?.words == [2])
  }

  /// Allocated ranges of a file (Linux's SEEK_DATA 3 and SEEK_HOLE 4).
  private func dataRanges(_ path: String) throws -> [Range<Int64>] {
    let seekData: Int32 = 3
    let seekHole: Int32 = 4
    let fd = open(path, O_RDONLY)
    defer { close(fd) }
    var ranges: [Range<Int64>] = []
    var offset: Int64 = 0
    while true {
      let data = lseek(fd, off_t(offset), seekData)
      if data < 0 { break }
      let hole = lseek(fd, data, seekHole)
      ranges.append(Int64(data)..<Int64(hole))
      offset = Int64(hole)
    }
    return ranges
  }

  @Test(
    "discards punch the freed clusters in the file as QEMU's do",
    arguments: [["-d", "unmap"], ["-d", "ignore"], ["-d", "unmap", "pass-discard-request=off"]])
  func passDiscard(_ arguments: [String]) async throws {
    let scratch = try ScratchDirectory()
    let qemuPath = scratch.file("q.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", qemuPath, "1M"])
    try await QcowTools.io(qemuPath, ["write -P 1 0 512k"])
    let spindlePath = scratch.file("s.qcow2")
    try Data(try contents(of: qemuPath)).write(to: URL(fileURLWithPath: spindlePath))
    let passRequest = arguments.count > 2 ? "off" : nil
    var qemuArguments = ["-d", arguments[1], "-c", "discard 128k 256k"]
    if let passRequest {
      qemuArguments += [
        "--image-opts",
        "driver=qcow2,pass-discard-request=\(passRequest),file.filename=\(qemuPath)",
      ]
    } else {
      qemuArguments += [qemuPath]
    }
    _ = try await QEMUTools.run(QEMUTools.qemuIO, qemuArguments)

    var options = DriverOptions(["driver": "qcow2", "file.filename": spindlePath])
    if let passRequest { options["pass-discard-request"] = passRequest }
    var node = NodeOptions()
    node.discard = arguments[1] == "unmap" ? .unmap : .ignore
    let image = try await ImageOpener.open(
      filename: nil, options: options, context: OpenContext(node: node))
    try await image.discard(at: 128 << 10, count: 256 << 10)
    await image.close()

    #expect(try contents(of: qemuPath) == contents(of: spindlePath))
    // The data clusters (from 0x50000) are allocated alike; metadata
    // clusters QEMU rewrites whole, so only the data area is compared.
    let dataStart: Int64 = 0x50000
    #expect(
      try dataRanges(qemuPath).filter { $0.lowerBound >= dataStart }
        == dataRanges(spindlePath).filter { $0.lowerBound >= dataStart })
  }

  @Test("backing: null opens an overlay without its backing file")
  func backingNull() async throws {
    let scratch = try ScratchDirectory()
    let base = scratch.file("base.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", base, "1M"])
    try await QcowTools.io(base, ["write -P 7 0 64k"])
    let overlay = scratch.file("overlay.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay])
    let node = try await ImageOpener.open(
      filename:
        #"json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":"\#(overlay)"}}"#
    )
    #expect(node.backing == nil)
    #expect(try await node.read(at: 0, count: 512) == [UInt8](repeating: 0, count: 512))
    await node.close()
    let withBacking = try await ImageOpener.open(filename: overlay)
    #expect(try await withBacking.read(at: 0, count: 512) == [UInt8](repeating: 7, count: 512))
    await withBacking.close()
  }
}
