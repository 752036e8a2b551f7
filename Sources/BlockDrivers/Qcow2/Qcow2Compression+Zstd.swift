import BlockCore
import CZstd

/// The compression method of an image's compressed clusters (the header's
/// `compression_type` byte).
public enum Qcow2CompressionType: UInt8, Sendable {
  /// Raw deflate (the default; no incompatible bit).
  case zlib = 0
  /// A zstd frame stream (incompatible bit 3).
  case zstd = 1
}

extension Qcow2Compression {
  /// Decompresses `source` into `destination` with the image's method; the
  /// destination must fill completely.
  static func decompress(
    _ type: Qcow2CompressionType, _ source: UnsafeRawBufferPointer,
    into destination: UnsafeMutableRawBufferPointer
  ) throws {
    switch type {
    case .zlib: try inflate(source, into: destination)
    case .zstd: try zstdDecompress(source, into: destination)
    }
  }

  /// Compresses `source` into `destination` with the image's method; the
  /// compressed length, or nil when it does not fit.
  static func compress(
    _ type: Qcow2CompressionType, _ source: UnsafeRawBufferPointer,
    into destination: UnsafeMutableRawBufferPointer
  ) throws -> Int? {
    switch type {
    case .zlib: try deflate(source, into: destination)
    case .zstd: try zstdCompress(source, into: destination)
    }
  }

  /// QEMU's `qcow2_zstd_compress`: one zstd frame written by the streaming
  /// interface with default parameters, all input given at once and ended
  /// in a single call (so the frame records the content size, as QEMU's
  /// does); nil when the frame does not fit in `destination`.
  static func zstdCompress(
    _ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer
  ) throws -> Int? {
    guard let context = ZSTD_createCCtx() else {
      throw BlockError(.ioError, "qcow2: cannot initialise zstd")
    }
    defer { ZSTD_freeCCtx(context) }
    var output = ZSTD_outBuffer(dst: destination.baseAddress, size: destination.count, pos: 0)
    var input = ZSTD_inBuffer(src: source.baseAddress, size: source.count, pos: 0)
    let remaining = ZSTD_compressStream2(context, &output, &input, ZSTD_e_end)
    if remaining == 0 { return output.pos }
    // More output pending (or an error code, which is larger still) means the
    // frame does not fit, as QEMU reads it.
    if remaining > output.size - output.pos { return nil }
    throw BlockError(.ioError, "qcow2: compression failed")
  }

  /// QEMU's `qcow2_zstd_decompress`: the stored bytes are one or more zstd
  /// frames (followed by padding up to the sector end); they are decoded
  /// until the cluster is full, which must coincide with the end of a frame.
  static func zstdDecompress(
    _ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer
  ) throws {
    let corrupt = BlockError(.ioError, "qcow2: compressed cluster is corrupt")
    guard let context = ZSTD_createDCtx() else {
      throw BlockError(.ioError, "qcow2: cannot initialise zstd")
    }
    defer { ZSTD_freeDCtx(context) }
    var output = ZSTD_outBuffer(dst: destination.baseAddress, size: destination.count, pos: 0)
    var input = ZSTD_inBuffer(src: source.baseAddress, size: source.count, pos: 0)
    var pending = 0
    while output.pos < output.size {
      let before = (input.pos, output.pos)
      pending = ZSTD_decompressStream(context, &output, &input)
      if ZSTD_isError(pending) != 0 { throw corrupt }
      // No progress: the data ran out before the cluster was complete.
      if input.pos <= before.0 && output.pos <= before.1 { throw corrupt }
    }
    // A frame still unfinished would decode past the cluster's end.
    if pending > 0 { throw corrupt }
  }
}
