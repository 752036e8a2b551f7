import BlockCore
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// The largest request qemu-io accepts (QEMU's `BDRV_REQUEST_MAX_BYTES`).
let maxRequestBytes: Int64 = 2_147_483_136

/// The memory of one qemu-io request (QEMU's `qemu_io_alloc`): aligned to the
/// image's preferred memory alignment, or 16 bytes past it with `-m`, and
/// filled with a byte (0xab before reads, so that what a driver leaves
/// untouched shows; the pattern before writes).
struct IOBuffer {
  /// How far `-m` moves the buffer from an aligned address (`MISALIGN_OFFSET`).
  static let misalignment = 16

  /// The memory, `skip` bytes of which come before the request's bytes.
  private let storage: AlignedBuffer
  private let skip: Int
  /// The number of bytes of the request.
  let count: Int
  /// The request's bytes as a vector: one segment, or one per length of a
  /// vectored command. It keeps the memory alive.
  let vector: IOVector

  /// A buffer of `count` bytes filled with `fill`, split into segments of the
  /// given lengths (one segment when nil).
  @BlockActor
  init(count: Int, fill: UInt8, segments: [Int]? = nil, session: IOSession) {
    let skip = session.misalign ? Self.misalignment : 0
    let alignment = max(session.backend?.root.limits.optMemAlignment ?? 4096, 1)
    let storage = AlignedBuffer(count: count + skip, alignment: alignment)
    storage.fill(fill)
    var vector = IOVector()
    var start = skip
    for length in segments ?? [count] {
      vector.append(storage, range: start..<start + length)
      start += length
    }
    self.storage = storage
    self.skip = skip
    self.count = count
    self.vector = vector
  }

  /// Calls `body` with the request's bytes, valid only during the call.
  func withUnsafeBytes<Result>(_ body: (UnsafeRawBufferPointer) throws -> Result) rethrows
    -> Result
  {
    try storage.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[skip...])) }
  }

  /// Calls `body` with the request's bytes, writable, valid only during the call.
  func withUnsafeMutableBytes<Result>(_ body: (UnsafeMutableRawBufferPointer) throws -> Result)
    rethrows -> Result
  {
    try storage.withUnsafeMutableBytes {
      try body(UnsafeMutableRawBufferPointer(rebasing: $0[skip...]))
    }
  }

  /// Whether `count` bytes from `start` all equal `pattern`.
  func matches(_ pattern: UInt8, from start: Int = 0, count: Int? = nil) -> Bool {
    let count = count ?? self.count - start
    let chunk = [UInt8](repeating: pattern, count: min(max(count, 1), 1 << 16))
    return withUnsafeBytes { bytes in
      chunk.withUnsafeBytes { expected in
        var position = start
        while position < start + count {
          let length = min(expected.count, start + count - position)
          if memcmp(bytes.baseAddress! + position, expected.baseAddress!, length) != 0 {
            return false
          }
          position += length
        }
        return true
      }
    }
  }
}

extension IOSession {
  /// qemu-io's `create_iovec`: one buffer for the lengths in `arguments`, each
  /// a segment of the vector. Prints the error and returns nil when a length
  /// does not parse or the total exceeds the request limit.
  /// The `off len [len...]` operands of readv, writev, aio_read and aio_write:
  /// the offset and a buffer as long as the lengths together, or nil once
  /// qemu-io's usage or error message has been printed.
  func vectorRequest(_ operands: ArraySlice<String>, _ command: IOCommandInfo, fill: UInt8)
    -> (offset: Int64, buffer: IOBuffer)?
  {
    guard operands.count >= 2 else {
      usage(command)
      return nil
    }
    guard let offset = number(operands.first!),
      let buffer = vectorBuffer(operands.dropFirst(), fill: fill)
    else { return nil }
    return (offset, buffer)
  }

  func vectorBuffer(_ arguments: ArraySlice<String>, fill: UInt8) -> IOBuffer? {
    var lengths: [Int] = []
    var total: Int64 = 0
    for argument in arguments {
      guard let length = number(argument) else { return nil }
      if length > maxRequestBytes {
        console.write("Argument '\(argument)' exceeds maximum size \(maxRequestBytes)\n")
        return nil
      }
      if total > maxRequestBytes - length {
        console.write("The total number of bytes exceed the maximum size \(maxRequestBytes)\n")
        return nil
      }
      lengths.append(Int(length))
      total += length
    }
    return IOBuffer(count: Int(total), fill: fill, segments: lengths, session: self)
  }

  /// qemu-io's `qemu_io_alloc_from_file`: a buffer filled with the contents of
  /// a file, repeated. Prints `perror`-style errors and returns nil on failure.
  func fileBuffer(count: Int, path: String) -> IOBuffer? {
    let buffer = IOBuffer(count: count, fill: 0, session: self)
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else {
      console.writeError("\(path): \(Errno.describe(Errno(rawValue: errno)))\n")
      return nil
    }
    defer { close(fd) }
    let filled = buffer.withUnsafeMutableBytes { bytes -> Int? in
      var filled = 0
      while filled < count {
        let result = read(fd, bytes.baseAddress! + filled, count - filled)
        if result < 0 {
          if errno == EINTR { continue }
          console.writeError("\(path): \(Errno.describe(Errno(rawValue: errno)))\n")
          return nil
        }
        if result == 0 { break }
        filled += result
      }
      if filled == 0 { return 0 }
      var position = filled
      while position < count {
        let length = min(filled, count - position)
        (bytes.baseAddress! + position).copyMemory(from: bytes.baseAddress!, byteCount: length)
        position += length
      }
      return filled
    }
    guard let filled else { return nil }
    if filled == 0 {
      console.writeError("\(path): file is empty\n")
      return nil
    }
    return buffer
  }
}
