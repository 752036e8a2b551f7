/// Guesses an image's format from its first bytes as QEMU 7.2's
/// `bdrv_probe_all` does: every format driver QEMU has scores the buffer
/// (and, for dmg, the file name), the highest score wins, and raw, which
/// scores 1 for anything, wins only when no format claims the image.
///
/// Spindle implements few of these formats; the others are recognised so
/// that an image of them is reported by name instead of being opened as raw
/// (see ``ImageOpener/unimplementedFormats``).
public enum FormatProbe {
  /// How many bytes QEMU reads to probe (`BLOCK_PROBE_BUF_SIZE`); shorter
  /// images are padded with zeroes, as QEMU's read past their end returns.
  public static let bufferSize = 2048

  /// One format's probe: its QEMU name and its score for a buffer of
  /// ``bufferSize`` bytes and the image's file name.
  private struct Prober: Sendable {
    let format: String
    let score: @Sendable ([UInt8], String?) -> Int
  }

  /// QEMU's probing drivers; of equal scores the first wins, as in QEMU's
  /// driver list (only dmg and cloop can tie: a cloop image named `.dmg` is
  /// dmg).
  private static let probers: [Prober] = [
    Prober(format: "vmdk", score: { bytes, _ in vmdkScore(bytes) }),
    Prober(
      format: "vpc", score: { bytes, _ in bytes.starts(with: Array("conectix".utf8)) ? 100 : 0 }),
    Prober(
      format: "vhdx", score: { bytes, _ in bytes.starts(with: Array("vhdxfile".utf8)) ? 100 : 0 }),
    Prober(format: "vdi", score: { bytes, _ in vdiScore(bytes) }),
    Prober(
      format: "qed", score: { bytes, _ in bytes.starts(with: [0x51, 0x45, 0x44, 0x00]) ? 100 : 0 }),
    Prober(format: "parallels", score: { bytes, _ in parallelsScore(bytes) }),
    Prober(format: "dmg", score: { _, filename in dmgScore(filename) }),
    Prober(format: "luks", score: { bytes, _ in luksScore(bytes) }),
    Prober(format: "bochs", score: { bytes, _ in bochsScore(bytes) }),
    Prober(format: "cloop", score: { bytes, _ in cloopScore(bytes) }),
    Prober(format: "qcow", score: { bytes, _ in qcowScore(bytes, version: { $0 == 1 }) }),
    Prober(format: "qcow2", score: { bytes, _ in qcowScore(bytes, version: { $0 >= 2 }) }),
    Prober(format: "raw", score: { _, _ in 1 }),
  ]

  /// The format QEMU would choose for an image starting with `prefix` (at
  /// most ``bufferSize`` bytes are looked at) and named `filename`.
  public static func format(of prefix: [UInt8], filename: String?) -> String {
    var buffer = Array(prefix.prefix(bufferSize))
    buffer += [UInt8](repeating: 0, count: bufferSize - buffer.count)
    var best = (format: "raw", score: 0)
    for prober in probers {
      let score = prober.score(buffer, filename)
      if score > best.score { best = (prober.format, score) }
    }
    return best.format
  }

  private static func bigEndian32(_ bytes: [UInt8], at offset: Int) -> UInt32 {
    bytes[offset..<offset + 4].reduce(0) { $0 << 8 | UInt32($1) }
  }

  private static func littleEndian32(_ bytes: [UInt8], at offset: Int) -> UInt32 {
    bytes[offset..<offset + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) }
  }

  /// `vmdk_probe`: a sparse extent's magic (`COWD`, `KDMV`), or a text
  /// descriptor whose first line that is not a comment or blank (blank
  /// lines must start with a space) is `version=1`, `2` or `3`.
  private static func vmdkScore(_ bytes: [UInt8]) -> Int {
    if bytes.starts(with: Array("COWD".utf8)) || bytes.starts(with: Array("KDMV".utf8)) {
      return 100
    }
    var index = 0
    while index < bytes.count {
      switch bytes[index] {
      case UInt8(ascii: "#"):
        while index < bytes.count && bytes[index] != UInt8(ascii: "\n") { index += 1 }
        index += 1
      case UInt8(ascii: " "):
        while index < bytes.count && bytes[index] == UInt8(ascii: " ") { index += 1 }
        if index < bytes.count && bytes[index] == UInt8(ascii: "\r") { index += 1 }
        guard index < bytes.count, bytes[index] == UInt8(ascii: "\n") else { return 0 }
        index += 1
      default:
        let rest = bytes[index...]
        for version in ["1", "2", "3"] {
          for ending in ["\n", "\r\n"]
          where rest.starts(with: Array("version=\(version)\(ending)".utf8)) {
            return 100
          }
        }
        return 0
      }
    }
    return 0
  }

  /// `vdi_probe`: the signature 0xbeda107f (little-endian) at 0x40.
  private static func vdiScore(_ bytes: [UInt8]) -> Int {
    littleEndian32(bytes, at: 0x40) == 0xbeda_107f ? 100 : 0
  }

  /// `parallels_probe`: one of the two magics and version 2.
  private static func parallelsScore(_ bytes: [UInt8]) -> Int {
    let magics = ["WithoutFreeSpace", "WithouFreSpacExt"].map { Array($0.utf8) }
    guard magics.contains(where: { bytes.starts(with: $0) }) else { return 0 }
    return littleEndian32(bytes, at: 16) == 2 ? 100 : 0
  }

  /// `dmg_probe`: a file name ending in `.dmg` (longer than the suffix).
  private static func dmgScore(_ filename: String?) -> Int {
    guard let filename, filename.utf8.count > 4, filename.hasSuffix(".dmg") else { return 0 }
    return 2
  }

  /// `block_crypto_probe_luks`: the LUKS magic and version 1.
  private static func luksScore(_ bytes: [UInt8]) -> Int {
    guard bytes.starts(with: [0x4C, 0x55, 0x4B, 0x53, 0xBA, 0xBE]) else { return 0 }
    return bytes[6] == 0 && bytes[7] == 1 ? 100 : 0
  }

  /// `bochs_probe`: the magic, type and subtype strings (each ended by a
  /// NUL) and version 1 or 2.
  private static func bochsScore(_ bytes: [UInt8]) -> Int {
    func field(_ offset: Int, is text: String) -> Bool {
      bytes[offset...].starts(with: Array(text.utf8) + [0])
    }
    guard field(0, is: "Bochs Virtual HD Image"), field(32, is: "Redolog"),
      field(48, is: "Growing")
    else { return 0 }
    let version = littleEndian32(bytes, at: 64)
    return version == 0x0002_0000 || version == 0x0001_0000 ? 100 : 0
  }

  /// `cloop_probe`: the version 2.0 shell preamble.
  private static func cloopScore(_ bytes: [UInt8]) -> Int {
    let magic =
      "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
    return bytes.starts(with: Array(magic.utf8)) ? 2 : 0
  }

  /// `qcow_probe` and `qcow2_probe`: the magic `QFI\xfb` and a version.
  private static func qcowScore(_ bytes: [UInt8], version accepts: (UInt32) -> Bool) -> Int {
    guard bytes.starts(with: [0x51, 0x46, 0x49, 0xFB]) else { return 0 }
    return accepts(bigEndian32(bytes, at: 4)) ? 100 : 0
  }
}
