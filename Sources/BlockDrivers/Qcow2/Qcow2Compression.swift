import BlockCore
import CZlib

/// Compressed cluster codecs (QEMU's block/qcow2-threads.c): raw deflate
/// streams with a 4 KiB window (zlib `windowBits` -12), no zlib header.
enum Qcow2Compression {
  /// Inflates `source` into `destination`, which must fill completely
  /// (QEMU's `qcow2_zlib_decompress`: success is the stream's end, or a
  /// full output buffer).
  static func inflate(
    _ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer
  )
    throws
  {
    var stream = z_stream()
    guard spindle_inflateInit2(&stream, -12) == Z_OK else {
      throw BlockError(.ioError, "qcow2: cannot initialise zlib")
    }
    defer { inflateEnd(&stream) }
    stream.next_in = UnsafeMutablePointer(
      mutating: source.baseAddress?.assumingMemoryBound(to: Bytef.self))
    stream.avail_in = uInt(source.count)
    stream.next_out = destination.baseAddress?.assumingMemoryBound(to: Bytef.self)
    stream.avail_out = uInt(destination.count)
    let result = CZlib.inflate(&stream, Z_FINISH)
    guard result == Z_STREAM_END || (result == Z_BUF_ERROR && stream.avail_out == 0) else {
      throw BlockError(.ioError, "qcow2: compressed cluster is corrupt")
    }
    if stream.avail_out != 0 {
      // A stream that ended early leaves the cluster short: QEMU refuses it.
      throw BlockError(.ioError, "qcow2: compressed cluster is corrupt")
    }
  }

  /// Deflates `source` into `destination` (QEMU's `qcow2_zlib_compress`:
  /// default level, 4 KiB window, memLevel 9); the compressed length, or nil
  /// when it does not fit.
  static func deflate(
    _ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer
  ) throws -> Int? {
    var stream = z_stream()
    guard
      spindle_deflateInit2(&stream, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY)
        == Z_OK
    else { throw BlockError(.ioError, "qcow2: cannot initialise zlib") }
    defer { deflateEnd(&stream) }
    stream.next_in = UnsafeMutablePointer(
      mutating: source.baseAddress?.assumingMemoryBound(to: Bytef.self))
    stream.avail_in = uInt(source.count)
    stream.next_out = destination.baseAddress?.assumingMemoryBound(to: Bytef.self)
    stream.avail_out = uInt(destination.count)
    switch CZlib.deflate(&stream, Z_FINISH) {
    case Z_STREAM_END: return destination.count - Int(stream.avail_out)
    case Z_OK: return nil
    default: throw BlockError(.ioError, "qcow2: compression failed")
    }
  }
}
