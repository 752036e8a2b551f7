import BlockTestSupport
import Foundation
import Testing

/// Format probing against qemu-img 7.2: every format QEMU probes is
/// recognised by Spindle (by QEMU's name), formats Spindle does not implement
/// fail with a clear error instead of being opened as raw, and `-f raw`
/// still opens anything as raw.
@Suite(.requires("qemu-img"))
struct DifferentialProbeTests {
  /// One image: its file name, the format QEMU probes it as, and how it is
  /// made (by qemu-img, or by hand where qemu-img cannot create the format).
  struct Image: Sendable, CustomStringConvertible {
    let name: String
    let format: String
    let make: @Sendable (String) async throws -> Void
    var description: String { "\(name) (\(format))" }
  }

  static func created(_ name: String, _ format: String, _ extra: [String] = []) -> Image {
    Image(name: name, format: format) { path in
      try await qemuImg(["create", "-q", "-f", format] + extra + [path, "1M"])
    }
  }

  static func handBuilt(_ name: String, _ format: String, _ bytes: [UInt8]) -> Image {
    Image(name: name, format: format) { path in
      try Data(bytes).write(to: URL(fileURLWithPath: path))
    }
  }

  static func text(_ string: String) -> [UInt8] { Array(string.utf8) }

  static func littleEndian32(_ value: UInt32) -> [UInt8] {
    (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
  }

  static func bigEndian(_ value: UInt64, bytes: Int) -> [UInt8] {
    (0..<bytes).reversed().map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
  }

  /// `bytes` padded with zeroes to `size`.
  static func padded(_ bytes: [UInt8], to size: Int) -> [UInt8] {
    bytes + [UInt8](repeating: 0, count: max(0, size - bytes.count))
  }

  /// A Bochs growing redolog of 4 KiB with one unallocated extent.
  static let bochs: [UInt8] = {
    var header = padded(text("Bochs Virtual HD Image"), to: 32)
    header += padded(text("Redolog"), to: 16) + padded(text("Growing"), to: 16)
    header += littleEndian32(0x0002_0000) + littleEndian32(512) + littleEndian32(1)
    header += littleEndian32(512) + littleEndian32(4096) + littleEndian32(0)
    header += littleEndian32(4096) + littleEndian32(0)
    return padded(header, to: 512) + [0xFF, 0xFF, 0xFF, 0xFF]
  }()

  /// A cloop 2.0 image with one (empty) block of 512 bytes.
  static let cloop: [UInt8] = {
    let magic =
      "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
    var bytes = padded(text(magic), to: 128) + bigEndian(512, bytes: 4) + bigEndian(1, bytes: 4)
    bytes += bigEndian(152, bytes: 8) + bigEndian(152, bytes: 8)
    return bytes
  }()

  static let images: [Image] = [
    created("x.vmdk", "vmdk"),
    created("flat.vmdk", "vmdk", ["-o", "subformat=monolithicFlat"]),
    created("stream.vmdk", "vmdk", ["-o", "subformat=streamOptimized"]),
    created("x.vpc", "vpc"),
    created("x.vhdx", "vhdx"),
    created("x.vdi", "vdi"),
    created("x.qed", "qed"),
    created("x.parallels", "parallels"),
    created("x.qcow", "qcow"),
    created("x.qcow2", "qcow2"),
    // A fixed VHD has its footer at the end only: QEMU probes raw.
    Image(name: "fixed.vpc", format: "raw") { path in
      try await qemuImg(["create", "-q", "-f", "vpc", "-o", "subformat=fixed", path, "1M"])
    },
    Image(name: "x.luks", format: "luks") { path in
      try await qemuImg([
        "create", "-q", "--object", "secret,id=sec0,data=123456", "-f", "luks", "-o",
        "key-secret=sec0,iter-time=10", path, "1M",
      ])
    },
    handBuilt("x.bochs", "bochs", bochs),
    handBuilt("x.cloop", "cloop", cloop),
    // dmg is probed by its name alone, and wins its tie with cloop.
    handBuilt("cloop.dmg", "dmg", cloop),
    handBuilt("x.dmg", "dmg", [UInt8](repeating: 0, count: 4096)),
    handBuilt("cowd.img", "vmdk", padded(text("COWD"), to: 1024)),
    handBuilt("kdmv.img", "vmdk", padded(text("KDMV"), to: 1024)),
    handBuilt("desc.img", "vmdk", text("# Disk DescriptorFile\n   \r\nversion=2\r\nCID=1\n")),
    // A blank line must start with a space: this is no descriptor.
    handBuilt("nodesc.img", "raw", text("# comment\n\nversion=1\n")),
    handBuilt("ext.img", "parallels", padded(text("WithouFreSpacExt") + littleEndian32(2), to: 64)),
    handBuilt("v1.img", "raw", padded(text("WithoutFreeSpace") + littleEndian32(1), to: 64)),
    handBuilt(
      "vdi.img", "vdi",
      padded([UInt8](repeating: 0, count: 0x40) + littleEndian32(0xbeda_107f), to: 512)),
    handBuilt("qcow1.img", "qcow", padded([0x51, 0x46, 0x49, 0xFB, 0, 0, 0, 1], to: 512)),
    // Short images are probed as if padded with zeroes to 2 KiB.
    handBuilt("short.img", "vpc", text("conectix")),
    handBuilt("cloopprefix.img", "raw", text("#!/bin/sh\n")),
    handBuilt("empty.img", "raw", []),
    handBuilt("zero.img", "raw", [UInt8](repeating: 0, count: 4096)),
  ]

  /// The format QEMU probes is the image's: `info` without `-f` prints
  /// exactly what `info -f FORMAT` prints (the format's view or its error).
  /// Spindle shows the same for the formats it implements, and names the
  /// others in its error.
  @Test(arguments: images)
  func probesAsQEMU(_ image: Image) async throws {
    let fixture = try ImageFixture()
    let path = fixture.path(image.name)
    try await image.make(path)
    let probed = try await runProcess("qemu-img", ["info", path])
    let forced = try await runProcess("qemu-img", ["info", "-f", image.format, path])
    #expect(probed == forced, "QEMU does not probe \(image) as \(image.format)")
    let spindle = await runSpindle(["qemu-img", "info", path])
    if ["raw", "qcow2"].contains(image.format) {
      #expect(spindle == probed)
    } else {
      let asRaw = try await runProcess("qemu-img", ["info", "-f", "raw", path])
      #expect(probed != asRaw, "QEMU opens \(image) as raw")
      #expect(spindle.status == 1)
      #expect(spindle.output == "")
      #expect(
        spindle.error
          == "qemu-img: Could not open '\(path)': format '\(image.format)' is not supported by Spindle yet\n"
      )
      // Named explicitly, the format is refused the same way.
      let named = await runSpindle(["qemu-img", "info", "-f", image.format, path])
      #expect(named.error == spindle.error)
    }
  }

  /// `create` of a format QEMU creates and Spindle does not implement fails
  /// with the format's name and leaves no file.
  @Test(arguments: ["vmdk", "vpc", "vhdx", "vdi", "qed", "parallels", "qcow"])
  func createRefusesUnimplementedFormats(_ format: String) async throws {
    let run = try await runImageCommand(["create", "-q", "-f", format, "DIR/x.img", "1M"])
    #expect(run.qemu == ToolResult(status: 0, output: "", error: ""))
    #expect(
      run.spindle
        == ToolResult(
          status: 1, output: "",
          error: "qemu-img: DIR/x.img: format '\(format)' is not supported by Spindle yet\n"))
    #expect(try run.spindleFileNames().isEmpty)
  }

  /// `-f raw` opens an image of any format as raw, as QEMU does.
  @Test(arguments: images.filter { $0.format != "raw" })
  func explicitRawOpensAnything(_ image: Image) async throws {
    let run = try await runImageCommand(["info", "--output=json", "-f", "raw", "DIR/\(image.name)"])
    {
      try await image.make("\($0)/\(image.name)")
    }
    #expect(run.spindle == run.qemu, "\(run)")
  }

  /// Probing looks through a protocol prefix: `blkdebug::IMAGE` is probed
  /// through the blkdebug node, as QEMU probes the node below.
  @Test(arguments: ["x.qcow2", "x.vmdk"])
  func probesThroughBlkdebug(_ name: String) async throws {
    let image = Self.images.first { $0.name == name }!
    let run = try await runImageCommand(["info", "blkdebug::DIR/\(name)"]) {
      try await image.make("\($0)/\(name)")
    }
    if image.format == "qcow2" {
      #expect(run.spindle == run.qemu, "\(run)")
    } else {
      #expect(run.qemu.output.contains("file format: \(image.format)\n"), "\(run)")
      #expect(
        run.spindle.error.hasSuffix("format '\(image.format)' is not supported by Spindle yet\n"))
    }
  }
}
