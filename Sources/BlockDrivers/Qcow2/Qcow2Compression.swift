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
}
