import BlockCore
import Foundation

@testable import BlockDrivers

/// What Spindle must do with a hostile image.
enum HostileOutcome: Sendable {
  /// Opening fails with this message; `likeQEMU` when `qemu-img info` fails
  /// with the same words (otherwise Spindle is deliberately stricter).
  case refusedAtOpen(String, likeQEMU: Bool)
  /// The image opens; reads and writes either work or fail with a
  /// `BlockError` (never a crash, a hang or a write over metadata).
  case failsOrWorks
}

/// A damaged qcow2 image: a valid image (see ``HostileImage/base(at:)``) with
/// some bytes changed, and what opening and using it must give.
struct HostileImage: Sendable, CustomStringConvertible {
  /// Names the damage (also the fixture's file name).
  let name: String
  /// Changes the valid image's bytes into the hostile ones.
  let damage: @Sendable (inout [UInt8], HostileImage.Layout) -> Void
  /// The expected outcome.
  let outcome: HostileOutcome

  var description: String { name }

  /// Where the valid image keeps its structures (from its header).
  struct Layout: Sendable {
    var l1Offset: Int
    var refcountTableOffset: Int
    var refcountBlockOffset: Int
    var l2Offset: Int
    /// L2 index of the compressed cluster.
    var compressedIndex: Int
  }

  /// Guest clusters of the base image (512-byte clusters, 1 MiB disk): 0-7
  /// data, 16 compressed, 128 data.
  static let compressedGuestOffset: Int64 = 8192

  /// Writes the valid image the damage starts from and returns its layout.
  @BlockActor
  static func base(at path: String) async throws -> Layout {
    var options = Qcow2CreateOptions(size: 1 << 20)
    options.clusterSize = 512
    try await Qcow2Create.create(at: path, options: options)
    let node = try await openQcow2(path, readOnly: false)
    try await node.write(at: 0, bytes: [UInt8](repeating: 0x11, count: 4096))
    try await node.write(
      at: compressedGuestOffset, bytes: [UInt8](repeating: 0x22, count: 512),
      flags: .writeCompressed)
    try await node.write(at: 65536, bytes: [UInt8](repeating: 0x33, count: 512))
    await node.close()
    let bytes = try contents(of: path)
    let l1 = Int(bytes.uint64(at: 40))
    let table = Int(bytes.uint64(at: 48))
    return Layout(
      l1Offset: l1, refcountTableOffset: table,
      refcountBlockOffset: Int(bytes.uint64(at: table)),
      l2Offset: Int(bytes.uint64(at: l1) & Qcow2Entry.offsetMask),
      compressedIndex: Int(compressedGuestOffset / 512))
  }

  /// The hostile images of the suite.
  static let all: [HostileImage] = [
    HostileImage(
      name: "truncated-header", damage: { bytes, _ in bytes.removeSubrange(50...) },
      outcome: .refusedAtOpen("qcow2 header too short", likeQEMU: true)),
    HostileImage(
      name: "truncated-before-l2",
      damage: { bytes, layout in bytes.removeSubrange(layout.l2Offset...) },
      outcome: .failsOrWorks),
    HostileImage(
      name: "truncated-half", damage: { bytes, _ in bytes.removeSubrange((bytes.count / 2)...) },
      outcome: .failsOrWorks),
    HostileImage(
      name: "cluster-bits-8", damage: { bytes, _ in bytes.setUInt32(8, at: 20) },
      outcome: .refusedAtOpen("Unsupported cluster size: 2^8", likeQEMU: true)),
    HostileImage(
      name: "cluster-bits-22", damage: { bytes, _ in bytes.setUInt32(22, at: 20) },
      outcome: .refusedAtOpen("Unsupported cluster size: 2^22", likeQEMU: true)),
    HostileImage(
      name: "cluster-bits-63", damage: { bytes, _ in bytes.setUInt32(63, at: 20) },
      outcome: .refusedAtOpen("Unsupported cluster size: 2^63", likeQEMU: true)),
    HostileImage(
      name: "l1-size-2^31", damage: { bytes, _ in bytes.setUInt32(1 << 31, at: 36) },
      outcome: .refusedAtOpen("Active L1 table too large", likeQEMU: true)),
    // 32 MiB of L1 table in a file of a few KiB: QEMU allocates and reads
    // it; Spindle refuses before allocating.
    HostileImage(
      name: "l1-size-past-eof", damage: { bytes, _ in bytes.setUInt32(4 << 20, at: 36) },
      outcome: .refusedAtOpen("Active L1 table lies past the end of the image", likeQEMU: false)),
    HostileImage(
      name: "l1-offset-past-eof", damage: { bytes, _ in bytes.setUInt64(1 << 40, at: 40) },
      outcome: .refusedAtOpen("Active L1 table lies past the end of the image", likeQEMU: false)),
    HostileImage(
      name: "l1-offset-unaligned",
      damage: { bytes, layout in bytes.setUInt64(UInt64(layout.l1Offset + 8), at: 40) },
      outcome: .refusedAtOpen("Active L1 table offset invalid", likeQEMU: true)),
    HostileImage(
      name: "refcount-table-clusters-2^32-1",
      damage: { bytes, _ in bytes.setUInt32(.max, at: 56) },
      outcome: .refusedAtOpen("Reference count table too large", likeQEMU: true)),
    HostileImage(
      name: "refcount-table-clusters-past-eof",
      damage: { bytes, _ in bytes.setUInt32(10000, at: 56) },
      outcome: .refusedAtOpen(
        "Reference count table lies past the end of the image", likeQEMU: false)),
    HostileImage(
      name: "refcount-table-past-eof", damage: { bytes, _ in bytes.setUInt64(1 << 40, at: 48) },
      outcome: .refusedAtOpen(
        "Reference count table lies past the end of the image", likeQEMU: false)),
    HostileImage(
      name: "refcount-table-unaligned",
      damage: { bytes, layout in bytes.setUInt64(UInt64(layout.refcountTableOffset + 8), at: 48) },
      outcome: .refusedAtOpen("Reference count table offset invalid", likeQEMU: true)),
    HostileImage(
      name: "refcount-order-7", damage: { bytes, _ in bytes.setUInt32(7, at: 96) },
      outcome: .refusedAtOpen(
        "Reference count entry width too large; may not exceed 64 bits", likeQEMU: true)),
    HostileImage(
      name: "size-2^62", damage: { bytes, _ in bytes.setUInt64(1 << 62, at: 24) },
      outcome: .refusedAtOpen("Image is too big", likeQEMU: true)),
    HostileImage(
      name: "header-length-past-cluster", damage: { bytes, _ in bytes.setUInt32(4096, at: 100) },
      outcome: .refusedAtOpen("qcow2 header exceeds cluster size", likeQEMU: true)),
    HostileImage(
      name: "backing-name-1100-bytes",
      damage: { bytes, _ in
        bytes.setUInt64(200, at: 8)
        bytes.setUInt32(1100, at: 16)
      },
      outcome: .refusedAtOpen("Backing file name too long", likeQEMU: true)),
    // The end marker's length overflows the cluster: QEMU checks it too.
    HostileImage(
      name: "extension-end-length-overflow",
      damage: { bytes, _ in bytes.setUInt32(0xFFFF_FFF0, at: 116) },
      outcome: .refusedAtOpen("Header extension too large", likeQEMU: true)),
    HostileImage(
      name: "extension-backing-format-overflow",
      damage: { bytes, _ in
        bytes.setUInt32(Qcow2HeaderExtension.backingFormat, at: 112)
        bytes.setUInt32(0x10000, at: 116)
      },
      outcome: .refusedAtOpen("Header extension too large", likeQEMU: true)),
    HostileImage(
      name: "snapshot-count-10^6",
      damage: { bytes, _ in
        bytes.setUInt32(1_000_000, at: 60)
        bytes.setUInt64(51200, at: 64)
      },
      outcome: .refusedAtOpen("Snapshot table too large", likeQEMU: true)),
    HostileImage(
      name: "snapshot-table-past-eof",
      damage: { bytes, _ in
        bytes.setUInt32(1, at: 60)
        bytes.setUInt64(1 << 40, at: 64)
      },
      outcome: .failsOrWorks),
    HostileImage(
      name: "l2-table-is-l1-table",
      damage: { bytes, layout in
        bytes.setUInt64(UInt64(layout.l1Offset) | Qcow2Entry.copied, at: layout.l1Offset)
      },
      outcome: .failsOrWorks),
    HostileImage(
      name: "l2-table-is-refcount-table",
      damage: { bytes, layout in
        bytes.setUInt64(UInt64(layout.refcountTableOffset) | Qcow2Entry.copied, at: layout.l1Offset)
      },
      outcome: .failsOrWorks),
    HostileImage(
      name: "data-cluster-is-l1-table",
      damage: { bytes, layout in
        bytes.setUInt64(UInt64(layout.l1Offset) | Qcow2Entry.copied, at: layout.l2Offset)
      },
      outcome: .failsOrWorks),
    HostileImage(
      name: "data-cluster-is-refcount-table",
      damage: { bytes, layout in
        bytes.setUInt64(
          UInt64(layout.refcountTableOffset) | Qcow2Entry.copied, at: layout.l2Offset)
      },
      outcome: .failsOrWorks),
    HostileImage(
      name: "refcount-block-is-refcount-table",
      damage: { bytes, layout in
        bytes.setUInt64(UInt64(layout.refcountTableOffset), at: layout.refcountTableOffset)
      },
      outcome: .failsOrWorks),
    HostileImage(
      name: "refcount-block-is-l1-table",
      damage: { bytes, layout in
        bytes.setUInt64(UInt64(layout.l1Offset), at: layout.refcountTableOffset)
      },
      outcome: .failsOrWorks),
    HostileImage(
      name: "refcount-block-in-header",
      damage: { bytes, layout in bytes.setUInt64(0x100, at: layout.refcountTableOffset) },
      outcome: .failsOrWorks),
    HostileImage(
      name: "refcount-block-past-eof",
      damage: { bytes, layout in bytes.setUInt64(1 << 40, at: layout.refcountTableOffset) },
      outcome: .failsOrWorks),
    HostileImage(
      name: "refcounts-all-free",
      damage: { bytes, layout in
        bytes.replaceSubrange(
          layout.refcountBlockOffset..<layout.refcountBlockOffset + 512,
          with: [UInt8](repeating: 0, count: 512))
      },
      outcome: .failsOrWorks),
    HostileImage(
      name: "compressed-past-eof",
      damage: { bytes, layout in
        let at = layout.l2Offset + 8 * layout.compressedIndex
        bytes.setUInt64(1 << 62 | 1 << 40, at: at)
      },
      outcome: .failsOrWorks),
  ]
}
