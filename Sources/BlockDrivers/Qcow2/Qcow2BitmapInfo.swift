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
  /// Where the bitmap table is, and its number of entries (one per data
  /// cluster of the bitmap).
  var tableOffset: UInt64 = 0
  var tableEntries: UInt32 = 0

  /// QEMU's limit on the number of bitmaps (`QCOW2_MAX_BITMAPS`).
  static let maxBitmaps: UInt32 = 65535
  /// QEMU's limit on the directory (`QCOW2_MAX_BITMAP_DIRECTORY_SIZE`).
  static let maxDirectoryBytes: UInt64 = 1024 * UInt64(maxBitmaps)

  /// Reads the bitmap directory named by the image's bitmaps header
  /// extension, with the checks and messages of QEMU's
  /// `qcow2_read_extensions` and `bitmap_list_load`; empty when the image
  /// has no extension, or one that a program lacking bitmap support
  /// invalidated (the autoclear bit is clear) unless `ignoringAutoclear`
  /// (an editor's own directory, once loaded, as QEMU keeps its location
  /// in memory: a downgrade to version 2 clears the autoclear bits).
  @BlockActor
  public static func readAll(
    from file: BlockNode, header: Qcow2Header, ignoringAutoclear: Bool = false
  ) async throws -> [Qcow2BitmapInfo] {
    guard
      let ext = header.extensions.first(where: { $0.type == Qcow2HeaderExtension.bitmaps })
    else { return [] }
    func invalid(_ message: String) -> BlockError { BlockError(.invalidArgument, message) }
    guard ext.data.count == 24 else { throw invalid("bitmaps_ext: Invalid extension length") }
    guard ignoringAutoclear || header.autoclearFeatures & 0x1 != 0 else { return [] }
    let count = ext.data.uint32(at: 0)
    let size = ext.data.uint64(at: 8)
    let offset = ext.data.uint64(at: 16)
    guard ext.data.uint32(at: 4) == 0 else {
      throw invalid("bitmaps_ext: Reserved field is not zero")
    }
    guard count <= maxBitmaps else {
      throw invalid(
        "bitmaps_ext: Image has \(count) bitmaps, exceeding the QEMU supported maximum of "
          + "\(maxBitmaps)")
    }
    guard count > 0 else { throw invalid("found bitmaps extension with zero bitmaps") }
    guard offset % UInt64(header.clusterSize) == 0 else {
      throw invalid("bitmaps_ext: invalid bitmap directory offset")
    }
    guard size <= maxDirectoryBytes else {
      throw invalid(
        "bitmaps_ext: bitmap directory size (\(size)) exceeds the maximum supported size "
          + "(\(maxDirectoryBytes))")
    }
    guard size > 0 else { throw invalid("Requested bitmap directory size is zero") }
    // Bytes past the end of the file read as zeroes, as QEMU's do.
    let inFile = max(0, min(Int64(size), file.length - Int64(min(offset, UInt64(Int64.max)))))
    var directory = inFile > 0 ? try await file.read(at: Int64(offset), count: Int(inFile)) : []
    directory += [UInt8](repeating: 0, count: Int(size) - directory.count)
    return try entries(directory, count: Int(count), header: header)
  }

  /// The directory's entries, each checked as QEMU's `check_dir_entry`
  /// (a bitmap not in use must cover the whole disk).
  private static func entries(
    _ directory: [UInt8], count: Int, header: Qcow2Header
  ) throws -> [Qcow2BitmapInfo] {
    func invalid(_ message: String) -> BlockError { BlockError(.invalidArgument, message) }
    let broken = invalid("Broken bitmap directory")
    var bitmaps: [Qcow2BitmapInfo] = []
    var position = 0
    while position < directory.count {
      guard position + 24 <= directory.count else { throw broken }
      guard bitmaps.count < count else {
        throw invalid("More bitmaps found than specified in header extension")
      }
      let tableOffset = directory.uint64(at: position)
      let tableSize = UInt64(directory.uint32(at: position + 8))
      let flags = directory.uint32(at: position + 12)
      let type = directory[position + 16]
      let granularityBits = UInt64(directory[position + 17])
      let nameLength = Int(directory.bigEndian(at: position + 18, width: 2))
      let extraLength = Int(directory.uint32(at: position + 20))
      let nameStart = position + 24 + extraLength
      let next = (nameStart + nameLength + 7) & ~7
      guard extraLength <= directory.count, next <= directory.count else { throw broken }
      guard extraLength == 0 else { throw invalid("Bitmap extra data is not supported") }
      let name = String(decoding: directory[nameStart..<nameStart + nameLength], as: UTF8.self)
      let clusterSize = UInt64(header.clusterSize)
      let tableBytes = tableSize * clusterSize
      let inUse = flags & 0x1 != 0
      let valid =
        tableSize != 0 && tableOffset != 0 && tableOffset % clusterSize == 0
        && tableSize <= 0x800_0000 && (9...31).contains(granularityBits)
        && flags & ~UInt32(0x3) == 0 && nameLength <= 1023 && type == 1
        && tableBytes <= 0x2000_0000
        && (inUse || header.size <= (tableBytes * 8) << granularityBits)
      guard valid else { throw invalid("Bitmap '\(name)' doesn't satisfy the constraints") }
      bitmaps.append(
        Qcow2BitmapInfo(
          name: name, granularity: UInt64(1) << granularityBits, inUse: inUse,
          auto: flags & 0x2 != 0, tableOffset: tableOffset, tableEntries: UInt32(tableSize)))
      position = next
    }
    guard bitmaps.count == count else {
      throw invalid("Less bitmaps found than specified in header extension")
    }
    return bitmaps
  }
}
