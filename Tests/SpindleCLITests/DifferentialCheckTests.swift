import BlockTestSupport
import Foundation
import Testing

/// `qemu-img check` against Spindle's on identical copies of clean and
/// damaged qcow2 images: standard output, standard error, exit status, and
/// after a repair the repaired files (byte for byte, clean, same contents).
@Suite struct DifferentialCheckTests {
  /// How each image `t.qcow2` is made (called with the run's directory).
  static let scenarios: [String: @Sendable (String) async throws -> Void] = [
    "clean-data-and-compressed": { directory in
      try await makeImage(directory, ["-o", "cluster_size=65536"])
    },
    "clean-512-byte-clusters": { directory in
      try await makeImage(directory, ["-o", "cluster_size=512"], size: "1M")
    },
    "clean-2M-clusters": { directory in
      try await makeImage(
        directory, ["-o", "cluster_size=2M"], size: "64M", compressed: "write -c -P 9 4M 2M")
    },
    "clean-refcount-bits-1": { directory in
      try await makeImage(directory, ["-o", "refcount_bits=1"])
    },
    "clean-refcount-bits-64": { directory in
      try await makeImage(directory, ["-o", "refcount_bits=64"])
    },
    "clean-compat-0.10": { directory in
      try await makeImage(directory, ["-o", "compat=0.10"])
    },
    "backing-file": { directory in
      try await qemuImg(["create", "-q", "-f", "qcow2", "\(directory)/base.qcow2", "8M"])
      try await qemuIO("\(directory)/base.qcow2", "write -P 1 0 8M")
      try await qemuImg([
        "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
        "\(directory)/t.qcow2",
      ])
      try await qemuIO("\(directory)/t.qcow2", "write -P 2 64k 128k")
    },
    "internal-snapshots": { directory in
      try await makeImage(directory, [])
      try await qemuImg(["snapshot", "-c", "one", "\(directory)/t.qcow2"])
      try await qemuIO("\(directory)/t.qcow2", "write -P 5 0 64k")
      try await qemuImg(["snapshot", "-c", "two", "\(directory)/t.qcow2"])
    },
    "leaked-refcount-bumped": { directory in
      try await makeImage(directory, [])
      let image = try Image("\(directory)/t.qcow2")
      let cluster = try image.dataCluster(0)
      try image.setRefcount(cluster, try image.refcount(cluster) + 1)
    },
    "leaked-l2-entry-dropped": { directory in
      try await makeImage(directory, [])
      try Image("\(directory)/t.qcow2").setL2Entry(1, 0)
    },
    "refcount-zero-for-used-cluster": { directory in
      try await makeImage(directory, [])
      let image = try Image("\(directory)/t.qcow2")
      try image.setRefcount(try image.dataCluster(2), 0)
    },
    "refcount-too-low-snapshot": { directory in
      try await makeImage(directory, [])
      try await qemuImg(["snapshot", "-c", "one", "\(directory)/t.qcow2"])
      let image = try Image("\(directory)/t.qcow2")
      try image.setRefcount(try image.dataCluster(3), 1)
    },
    "copied-flag-cleared": { directory in
      try await makeImage(directory, [])
      let image = try Image("\(directory)/t.qcow2")
      try image.setL2Entry(4, try image.l2Entry(4) & ~(1 << 63))
    },
    "copied-flag-on-l1-cleared": { directory in
      try await makeImage(directory, [])
      let image = try Image("\(directory)/t.qcow2")
      try image.write(image.l1Offset, UInt64(try image.l2TableOffset()), width: 8)
    },
    "dirty-lazy-refcounts": { directory in
      try await makeImage(directory, ["-o", "lazy_refcounts=on"])
      let image = try Image("\(directory)/t.qcow2")
      try image.write(72, 1, width: 8)
      try image.setRefcount(try image.dataCluster(5), 0)
    },
    "refcount-table-entry-reserved-bit": { directory in
      // The rebuild's new block lands on the old one: QEMU's overlap check
      // marks the image corrupt.
      try await makeImage(directory, [])
      let image = try Image("\(directory)/t.qcow2")
      let table = try image.read(48, width: 8)
      try image.write(table, try image.read(table, width: 8) | 1, width: 8)
    },
    "refcount-block-misaligned": { directory in
      // The stored refcounts cannot be read: QEMU signals the corruption.
      try await makeImage(directory, [])
      let image = try Image("\(directory)/t.qcow2")
      let table = try image.read(48, width: 8)
      try image.write(table, try image.read(table, width: 8) + 0x8000, width: 8)
    },
    "refcount-block-outside-image": { directory in
      try await makeImage(directory, [])
      let image = try Image("\(directory)/t.qcow2")
      try image.write(try image.read(48, width: 8) + 8, 50 << 20, width: 8)
    },
    "refcount-block-offset-negative": { directory in
      // Bit 63 of the first refcount table entry set (a libFuzzer finding):
      // the block is outside the image and each of its refcounts an I/O
      // error, as QEMU's bdrv_check_request makes a negative offset.
      try await makeImage(directory, [])
      let image = try Image("\(directory)/t.qcow2")
      let table = try image.read(48, width: 8)
      try image.write(table, try image.read(table, width: 8) | 1 << 63, width: 8)
    },
    "refcount-block-offset-negative-second": { directory in
      // The same for the second block of 512-byte clusters, which covers
      // clusters 256 to 511 of the file.
      try await makeImage(directory, ["-o", "cluster_size=512"], size: "1M")
      let image = try Image("\(directory)/t.qcow2")
      let table = try image.read(48, width: 8)
      try image.write(table + 8, try image.read(table + 8, width: 8) | 1 << 63, width: 8)
    },
    "snapshot-l1-offset-negative": { directory in
      // The snapshot's L1 table offset with bit 63 set: its read is EIO.
      try await makeImage(directory, [])
      try await qemuImg(["snapshot", "-c", "one", "\(directory)/t.qcow2"])
      let image = try Image("\(directory)/t.qcow2")
      let entry = try image.read(64, width: 8)
      try image.write(entry, try image.read(entry, width: 8) | 1 << 63, width: 8)
    },
    "data-cluster-misaligned": { directory in
      try await makeImage(directory, ["-o", "compat=0.10"])
      let image = try Image("\(directory)/t.qcow2")
      try image.setL2Entry(1, try image.l2Entry(1) + 512)
    },
    "snapshots-refcount-zero": { directory in
      try await makeImage(directory, ["-o", "cluster_size=4k"])
      try await qemuImg(["snapshot", "-c", "one", "\(directory)/t.qcow2"])
      try await qemuIO("\(directory)/t.qcow2", "write -P 1 0 128k")
      let image = try Image("\(directory)/t.qcow2")
      try image.setRefcount(try image.dataCluster(40), 0)
    },
    "corrupt-bit": { directory in
      try await makeImage(directory, [])
      try Image("\(directory)/t.qcow2").write(72, 2, width: 8)
    },
  ]

  static let variants: [[String]] = [[], ["--output=json"], ["-r", "leaks"], ["-r", "all"]]

  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: scenarios.keys.sorted(), variants)
  func checkMatches(_ scenario: String, _ options: [String]) async throws {
    let setup = try #require(Self.scenarios[scenario])
    let run = try await runImageCommand(["check"] + options + ["DIR/t.qcow2"]) { directory in
      try await Self.setUpOnce(directory, setup)
    }
    #expect(run.spindle == run.qemu, "\(run)")
    if options.contains("-r") {
      #expect(run.sameBytes("t.qcow2"), "repaired images differ")
      let qemuCheck = try await runProcess("qemu-img", ["check", "\(run.qemuDirectory)/t.qcow2"])
      let spindleCheck = try await run.checkSpindleImage("t.qcow2")
      if qemuCheck.status == 0 {
        // Readable after the repair: the same guest contents.
        let compare = try await run.compareContents("t.qcow2")
        #expect(compare.status == 0, "\(compare)")
      }
      #expect(spindleCheck.status == qemuCheck.status, "\(spindleCheck)")
    }
  }

  /// Persistent bitmaps count as referenced (read-only check; a writable
  /// open invalidates them in Spindle, see docs/qcow2.md).
  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: [[], ["--output=json"]])
  func bitmapsAreCounted(_ options: [String]) async throws {
    let run = try await runImageCommand(["check"] + options + ["DIR/t.qcow2"]) { directory in
      try await Self.setUpOnce(directory) { directory in
        try await Self.makeImage(directory, [])
        try await qemuImg(["bitmap", "--add", "\(directory)/t.qcow2", "b1"])
        try await qemuImg(["bitmap", "--add", "-g", "512k", "\(directory)/t.qcow2", "b2"])
        try await Self.qemuIO("\(directory)/t.qcow2", "write -P 1 1M 4M")
      }
    }
    #expect(run.spindle == run.qemu, "\(run)")
    #expect(run.spindle.status == 0)
  }

  static let usageRuns: [[String]] = [
    ["-r", "bogus", "DIR/t.qcow2"], ["--output=xml", "DIR/t.qcow2"], [],
    ["DIR/t.qcow2", "DIR/t.qcow2"], ["DIR/missing.qcow2"], ["-f", "raw", "DIR/t.qcow2"],
    ["DIR/r.raw"], ["-T", "bogus", "DIR/t.qcow2"], ["-f", "qcow2", "DIR/r.raw"],
    ["-U", "-r", "all", "DIR/t.qcow2"], ["-q", "DIR/t.qcow2"], ["-q", "-r", "all", "DIR/t.qcow2"],
    ["-r", "all", "--output=json", "DIR/t.qcow2"], ["-r", "leaks", "--output=json", "DIR/t.qcow2"],
    ["--image-opts", "driver=qcow2,file.filename=DIR/t.qcow2"],
  ]

  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: usageRuns)
  func usageMatches(_ arguments: [String]) async throws {
    let run = try await runImageCommand(["check"] + arguments) { directory in
      try await Self.makeImage(directory, [])
      // A leaked and a missing reference: repairs need a rebuild.
      let image = try Image("\(directory)/t.qcow2")
      try image.setRefcount(try image.dataCluster(0), 2)
      try image.setRefcount(try image.dataCluster(1), 0)
      try await qemuImg(["create", "-q", "-f", "raw", "\(directory)/r.raw", "1M"])
    }
    #expect(run.spindle == run.qemu, "\(run)")
  }

  /// Runs `setup` for the first (qemu-img) directory and copies its files to
  /// the second: images with snapshots hold timestamps.
  static func setUpOnce(_ directory: String, _ setup: (String) async throws -> Void) async throws {
    let parent = (directory as NSString).deletingLastPathComponent
    let first = "\(parent)/q"
    guard directory != first else { return try await setup(directory) }
    for name in try FileManager.default.contentsOfDirectory(atPath: first) {
      try FileManager.default.copyItem(atPath: "\(first)/\(name)", toPath: "\(directory)/\(name)")
    }
  }

  /// A qcow2 image `t.qcow2` with `options`, some data clusters (with a gap
  /// between two of them) and a compressed cluster.
  static func makeImage(
    _ directory: String, _ options: [String], size: String = "16M",
    compressed: String = "write -c -P 9 640k 64k"
  ) async throws {
    let path = "\(directory)/t.qcow2"
    try await qemuImg(["create", "-q", "-f", "qcow2"] + options + [path, size])
    try await qemuIO(path, "write -P 7 0 384k")
    try await qemuIO(path, "write -P 8 512k 64k")
    try await qemuIO(path, compressed)
  }

  static func qemuIO(_ path: String, _ command: String) async throws {
    let result = try await runProcess("qemu-io", ["-f", "qcow2", "-c", command, path])
    #expect(result.status == 0, "\(result)")
  }
}

/// Raw access to a qcow2 file for damaging it by hand.
struct Image {
  let handle: FileHandle
  let clusterBits: Int
  let refcountOrder: Int
  let l1Offset: UInt64

  init(_ path: String) throws {
    handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
    let header = try Self.read(handle, at: 0, count: 104)
    clusterBits = Int(Self.bigEndian(header, 20, 4))
    refcountOrder = Self.bigEndian(header, 4, 4) >= 3 ? Int(Self.bigEndian(header, 96, 4)) : 4
    l1Offset = Self.bigEndian(header, 40, 8)
  }

  static func read(_ handle: FileHandle, at offset: UInt64, count: Int) throws -> [UInt8] {
    try handle.seek(toOffset: offset)
    return Array(try handle.read(upToCount: count) ?? Data())
  }

  static func bigEndian(_ bytes: [UInt8], _ offset: Int, _ width: Int) -> UInt64 {
    bytes[offset..<offset + width].reduce(0) { $0 << 8 | UInt64($1) }
  }

  func read(_ offset: UInt64, width: Int) throws -> UInt64 {
    Self.bigEndian(try Self.read(handle, at: offset, count: width), 0, width)
  }

  func write(_ offset: UInt64, _ value: UInt64, width: Int) throws {
    try handle.seek(toOffset: offset)
    handle.write(
      Data((0..<width).map { UInt8(truncatingIfNeeded: value >> (8 * ($0 ^ (width - 1)))) }))
  }

  /// The first L2 table's offset.
  func l2TableOffset() throws -> UInt64 { try read(l1Offset, width: 8) & 0x00FF_FFFF_FFFF_FE00 }

  func l2Entry(_ index: UInt64) throws -> UInt64 {
    try read(try l2TableOffset() + index * 8, width: 8)
  }

  func setL2Entry(_ index: UInt64, _ value: UInt64) throws {
    try write(try l2TableOffset() + index * 8, value, width: 8)
  }

  /// The host cluster of guest cluster `index`.
  func dataCluster(_ index: UInt64) throws -> UInt64 {
    (try l2Entry(index) & 0x00FF_FFFF_FFFF_FE00) >> UInt64(clusterBits)
  }

  /// Where the 16-bit or wider refcount of `cluster` is (first refcount
  /// block only).
  private func refcountOffset(_ cluster: UInt64) throws -> UInt64 {
    precondition(refcountOrder >= 3)
    let table = try read(24 + 24, width: 8)
    return try read(table, width: 8) + cluster * UInt64(1 << (refcountOrder - 3))
  }

  func refcount(_ cluster: UInt64) throws -> UInt64 {
    try read(try refcountOffset(cluster), width: 1 << (refcountOrder - 3))
  }

  func setRefcount(_ cluster: UInt64, _ value: UInt64) throws {
    try write(try refcountOffset(cluster), value, width: 1 << (refcountOrder - 3))
  }
}
