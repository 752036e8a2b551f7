import BlockCore

/// A persistent dirty bitmap as `qemu-img info` lists it (QEMU's
/// `Qcow2BitmapInfo`, from the bitmap directory; qcow2 spec, "Bitmaps").
public struct Qcow2BitmapInfo: Sendable, Equatable {
  /// The bitmap's name.
  public var name: String
  /// Bytes covered by one bit.
  public var granularity: UInt64
  /// The bitmap was in use (not stored consistently) when the image closed.
  public var inUse: Bool
  /// The bitmap tracks writes automatically.
  public var auto: Bool

  /// Reads the bitmap directory named by the image's bitmaps header
  /// extension; empty when the image has none.
  @BlockActor
  public static func readAll(from file: BlockNode, header: Qcow2Header) async throws
    -> [Qcow2BitmapInfo]
  {
    guard
      let ext = header.extensions.first(where: { $0.type == Qcow2HeaderExtension.bitmaps }),
      ext.data.count >= 24
    else { return [] }
    let count = Int(ext.data.uint32(at: 0))
    let size = ext.data.uint64(at: 8)
    let offset = ext.data.uint64(at: 16)
    guard count > 0 else { return [] }
    guard size <= 64 << 20, offset < UInt64(Int64.max) - size,
      Int64(offset + size) <= file.length
    else {
      throw BlockError(.invalidArgument, "Bitmap directory lies past the end of the image")
    }
    let directory = try await file.read(at: Int64(offset), count: Int(size))
    var bitmaps: [Qcow2BitmapInfo] = []
    var position = 0
    for _ in 0..<count {
      guard position + 24 <= directory.count else {
        throw BlockError(.invalidArgument, "Bitmap directory is truncated")
      }
      let flags = directory.uint32(at: position + 12)
      let granularityBits = Int(directory[position + 17])
      let nameLength = Int(directory.bigEndian(at: position + 18, width: 2))
      let extraLength = Int(directory.uint32(at: position + 20))
      let nameStart = position + 24 + extraLength
      guard granularityBits < 64, extraLength <= directory.count,
        nameStart + nameLength <= directory.count
      else {
        throw BlockError(.invalidArgument, "Bitmap directory entry is invalid")
      }
      bitmaps.append(
        Qcow2BitmapInfo(
          name: String(decoding: directory[nameStart..<nameStart + nameLength], as: UTF8.self),
          granularity: UInt64(1) << UInt64(granularityBits),
          inUse: flags & 0x1 != 0, auto: flags & 0x2 != 0))
      position = (nameStart + nameLength + 7) & ~7
    }
    return bitmaps
  }
}
