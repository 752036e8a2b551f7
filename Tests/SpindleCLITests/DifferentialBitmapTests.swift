import BlockTestSupport
import Foundation
import Testing

/// `qemu-img bitmap` against Spindle's: every option and error on the same
/// images (bitmaps with data written by qemu-io, disabled ones, an in-use
/// one, other formats and versions); the images each side leaves must be
/// byte-identical (QEMU's bitmap operations allocate deterministically),
/// read the same by `qemu-img info --output=json` and `qemu-img check`.
@Suite struct DifferentialBitmapTests {
  /// Sets the in-use flag of the first bitmap in the directory of the
  /// image at `path`, as a program killed while using it leaves it.
  static func markFirstBitmapInUse(_ path: String) throws {
    var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
    func read(_ offset: Int, _ width: Int) -> Int {
      bytes[offset..<offset + width].reduce(0) { $0 << 8 | Int($1) }
    }
    var offset = read(100, 4)
    while read(offset, 4) != 0x2385_2875 {
      offset += 8 + (read(offset + 4, 4) + 7) & ~7
    }
    let directory = read(offset + 8 + 16, 8)
    bytes[directory + 15] |= 1
    try bytes.write(to: URL(fileURLWithPath: path))
  }

  static func io(_ command: String, _ path: String) async throws {
    let result = try await runProcess("qemu-io", ["-c", command, path])
    #expect(result.status == 0, "qemu-io \(command): \(result)")
  }

  /// bm.qcow2 (8 MiB: b0 enabled with writes at 64 KiB granularity, b1
  /// disabled at 4 KiB with writes), other.qcow2 (same size, bitmap src
  /// with writes), small.qcow2 (4 MiB, bitmap src), inuse.qcow2 (bm.qcow2
  /// with b0 in use), c512.qcow2 (512-byte clusters, b0 with writes over
  /// several data clusters), plain.qcow2 (no bitmaps), v2.qcow2, r.raw.
  static func setup(_ directory: String) async throws {
    let bm = "\(directory)/bm.qcow2"
    try await qemuImg(["create", "-q", "-f", "qcow2", bm, "8M"])
    try await qemuImg(["bitmap", "--add", bm, "b0"])
    try await qemuImg(["bitmap", "--add", "-g", "4k", bm, "b1"])
    try await io("write -P 1 0 100k", bm)
    try await io("write -P 2 5M 4k", bm)
    try await qemuImg(["bitmap", "--disable", bm, "b1"])
    try await io("write -P 3 7M 64k", bm)
    try FileManager.default.copyItem(atPath: bm, toPath: "\(directory)/inuse.qcow2")
    try markFirstBitmapInUse("\(directory)/inuse.qcow2")
    for (name, size) in [("other", "8M"), ("small", "4M")] {
      let path = "\(directory)/\(name).qcow2"
      try await qemuImg(["create", "-q", "-f", "qcow2", path, size])
      try await qemuImg(["bitmap", "--add", "-g", "512", path, "src"])
      try await io("write 1M 3k", path)
    }
    let small = "\(directory)/c512.qcow2"
    try await qemuImg(["create", "-q", "-f", "qcow2", "-o", "cluster_size=512", small, "8M"])
    try await qemuImg(["bitmap", "--add", "-g", "512", small, "b0"])
    try await io("write 0 4k", small)
    try await io("write 3M 1k", small)
    try await io("write 7M 4k", small)
    try await qemuImg(["create", "-q", "-f", "qcow2", "\(directory)/plain.qcow2", "8M"])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "\(directory)/v2.qcow2", "8M",
    ])
    try await qemuImg(["create", "-q", "-f", "raw", "\(directory)/r.raw", "8M"])
  }

  static let runs: [[String]] = [
    // Each operation on existing bitmaps, and its errors.
    ["--add", "DIR/bm.qcow2", "new"], ["--add", "-g", "512", "DIR/bm.qcow2", "new"],
    ["--add", "-g", "2M", "--disable", "DIR/bm.qcow2", "new"],
    ["--add", "--granularity", "128k", "DIR/plain.qcow2", "x"],
    ["--add", "DIR/bm.qcow2", "b0"], ["--add", "DIR/bm.qcow2", ""],
    ["--add", "-g", "100", "DIR/bm.qcow2", "x"], ["--add", "-g", "4G", "DIR/bm.qcow2", "x"],
    ["--add", "-g", "0", "DIR/bm.qcow2", "x"], ["--add", "-g", "x", "DIR/bm.qcow2", "x"],
    ["--add", "DIR/bm.qcow2", String(repeating: "n", count: 1024)],
    ["--add", "DIR/v2.qcow2", "x"], ["-f", "raw", "--add", "DIR/r.raw", "x"],
    ["-f", "raw", "--clear", "DIR/r.raw", "x"],
    ["--remove", "DIR/bm.qcow2", "b0"], ["--remove", "DIR/bm.qcow2", "b1"],
    ["--remove", "DIR/bm.qcow2", "nope"], ["--remove", "DIR/c512.qcow2", "b0"],
    ["--clear", "DIR/bm.qcow2", "b0"], ["--clear", "DIR/bm.qcow2", "nope"],
    ["--enable", "DIR/bm.qcow2", "b1"], ["--disable", "DIR/bm.qcow2", "b0"],
    ["--enable", "DIR/bm.qcow2", "nope"], ["--disable", "DIR/bm.qcow2", "nope"],
    ["--merge", "b1", "DIR/bm.qcow2", "b0"], ["--merge", "b0", "DIR/bm.qcow2", "b1"],
    ["--merge", "nope", "DIR/bm.qcow2", "b0"], ["--merge", "b0", "DIR/bm.qcow2", "nope"],
    ["--merge", "src", "-b", "DIR/other.qcow2", "DIR/bm.qcow2", "b0"],
    ["--merge", "src", "-b", "DIR/other.qcow2", "-F", "qcow2", "DIR/bm.qcow2", "b1"],
    ["--merge", "src", "-b", "DIR/small.qcow2", "DIR/bm.qcow2", "b0"],
    ["--merge", "nope", "-b", "DIR/other.qcow2", "DIR/bm.qcow2", "b0"],
    ["--merge", "x", "-b", "DIR/r.raw", "-F", "raw", "DIR/bm.qcow2", "b0"],
    ["--merge", "b0", "-b", "DIR/bm.qcow2", "DIR/bm.qcow2", "b0"],
    ["--merge", "b0", "-b", "DIR/missing.qcow2", "DIR/bm.qcow2", "b0"],
    ["--add", "--merge", "b0", "DIR/c512.qcow2", "copy"],
    // Several operations in command-line order; a failure stops the rest
    // but the bitmaps are stored.
    ["--add", "--disable", "DIR/bm.qcow2", "new"], ["--disable", "--add", "DIR/bm.qcow2", "new"],
    ["--remove", "--add", "-g", "8k", "DIR/bm.qcow2", "b0"],
    ["--clear", "--merge", "b1", "--disable", "DIR/bm.qcow2", "b0"],
    ["--add", "--merge", "nope", "DIR/bm.qcow2", "new"],
    ["--add", "--remove", "DIR/bm.qcow2", "new"], ["--remove", "--remove", "DIR/bm.qcow2", "b0"],
    // In-use (inconsistent) bitmaps.
    ["--add", "DIR/inuse.qcow2", "new"], ["--clear", "DIR/inuse.qcow2", "b0"],
    ["--enable", "DIR/inuse.qcow2", "b0"], ["--merge", "b0", "DIR/inuse.qcow2", "b1"],
    ["--merge", "b1", "DIR/inuse.qcow2", "b0"], ["--remove", "DIR/inuse.qcow2", "b0"],
    ["--clear", "DIR/inuse.qcow2", "b1"],
    // Options and usage errors.
    ["--image-opts", "--clear", "driver=qcow2,file.filename=DIR/bm.qcow2", "b0"],
    ["--object", "secret,id=s0,data=x", "--clear", "DIR/bm.qcow2", "b0"],
    ["-f", "qcow2", "--clear", "DIR/bm.qcow2", "b0"], ["DIR/bm.qcow2", "b0"],
    ["-g", "512", "--clear", "DIR/bm.qcow2", "b0"],
    ["-F", "qcow2", "--clear", "DIR/bm.qcow2", "b0"],
    ["-b", "DIR/other.qcow2", "--clear", "DIR/bm.qcow2", "b0"],
    ["--clear", "DIR/bm.qcow2"], ["--clear", "DIR/bm.qcow2", "b0", "extra"],
    ["--merge"], ["--bogus", "DIR/bm.qcow2", "b0"], ["--clear", "DIR/missing.qcow2", "b0"],
  ]

  /// QEMU's node names (`#block123`) count the nodes a process opened.
  static func maskNodeNames(_ text: String) -> String {
    text.replacingOccurrences(of: "#block[0-9]+", with: "#blockN", options: .regularExpression)
  }

  @Test(.requires("qemu-img", "qemu-io"), arguments: runs)
  func bitmapMatches(_ arguments: [String]) async throws {
    var run = try await runImageCommand(["bitmap"] + arguments, setup: Self.setup)
    run.qemu.error = Self.maskNodeNames(run.qemu.error)
    run.spindle.error = Self.maskNodeNames(run.spindle.error)
    #expect(run.spindle == run.qemu, "\(run)")
    for name in try run.fileNames() where name.hasSuffix(".qcow2") {
      #expect(run.sameBytes(name), "\(name) differs after bitmap \(arguments)")
      let info = try await runProcess(
        "qemu-img", ["info", "--output=json", "\(run.spindleDirectory)/\(name)"])
      let qemuInfo = try await runProcess(
        "qemu-img", ["info", "--output=json", "\(run.qemuDirectory)/\(name)"])
      #expect(
        info.output.replacingOccurrences(of: run.spindleDirectory, with: "DIR")
          == qemuInfo.output.replacingOccurrences(of: run.qemuDirectory, with: "DIR"),
        "\(name) info")
      let check = try await run.checkSpindleImage(name)
      #expect(check.status == 0, "\(name): \(check)")
    }
  }
}
