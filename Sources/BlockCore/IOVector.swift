/// A list of memory segments that one request reads into or writes from (QEMU's
/// `QEMUIOVector`).
///
/// Segments point at memory owned elsewhere: by the caller, or by
/// ``AlignedBuffer``s that the vector keeps alive. Slicing and concatenating make
/// new segment lists over the same memory; nothing is copied until
/// ``copyIn(_:at:)``, ``copyOut(to:at:)`` or ``fill(_:at:count:)`` is called.
///
/// The vector is `@unchecked Sendable` because its segments travel to I/O threads
/// while the request that owns the memory waits for them.
public struct IOVector: @unchecked Sendable {
  /// The memory segments, in order.
  public private(set) var segments: [UnsafeMutableRawBufferPointer] = []
  /// Total number of bytes across segments.
  public private(set) var count: Int = 0
  private var owners: [AnyObject] = []

  /// An empty vector.
  public init() {}

  /// A vector over one caller-owned segment.
  public init(_ segment: UnsafeMutableRawBufferPointer) {
    append(segment)
  }

  /// A vector over a whole aligned buffer, keeping it alive.
  public init(_ buffer: AlignedBuffer) {
    append(buffer.bytes, owner: buffer)
  }

  /// A vector over a freshly allocated buffer of `count` bytes.
  public init(allocating count: Int, alignment: Int = 4096, zeroed: Bool = false) {
    self.init(AlignedBuffer(count: count, alignment: alignment, zeroed: zeroed))
  }

  /// Appends a segment; `owner`, when given, is kept alive as long as the vector.
  public mutating func append(_ segment: UnsafeMutableRawBufferPointer, owner: AnyObject? = nil) {
    if let owner { owners.append(owner) }
    guard segment.count > 0 else { return }
    segments.append(segment)
    count += segment.count
  }

  /// Appends every segment of another vector.
  public mutating func append(_ other: IOVector) {
    owners.append(contentsOf: other.owners)
    segments.append(contentsOf: other.segments)
    count += other.count
  }

  /// The bytes `offset ..< offset + length` of this vector, sharing its memory.
  public func slice(_ offset: Int, _ length: Int) -> IOVector {
    precondition(offset >= 0 && length >= 0 && offset + length <= count, "slice out of range")
    if offset == 0 && length == count { return self }
    var result = IOVector()
    result.owners = owners
    var skip = offset
    var remaining = length
    for segment in segments where remaining > 0 {
      if skip >= segment.count {
        skip -= segment.count
        continue
      }
      let take = min(segment.count - skip, remaining)
      result.segments.append(UnsafeMutableRawBufferPointer(rebasing: segment[skip..<skip + take]))
      result.count += take
      remaining -= take
      skip = 0
    }
    return result
  }

  /// Calls `body` with each segment piece that overlaps `offset ..< offset + length`.
  @inlinable
  func forEachPiece(
    _ offset: Int, _ length: Int, _ body: (UnsafeMutableRawBufferPointer, Int) throws -> Void
  ) rethrows {
    precondition(offset >= 0 && length >= 0 && offset + length <= count, "range out of vector")
    var position = 0
    var done = 0
    for segment in segments where done < length {
      let end = position + segment.count
      defer { position = end }
      if end <= offset + done { continue }
      let start = offset + done - position
      let take = min(segment.count - start, length - done)
      try body(UnsafeMutableRawBufferPointer(rebasing: segment[start..<start + take]), done)
      done += take
    }
  }

  /// Sets `count` bytes from `offset` to `byte`.
  public func fill(_ byte: UInt8, at offset: Int = 0, count length: Int? = nil) {
    let length = length ?? (count - offset)
    forEachPiece(offset, length) { piece, _ in
      piece.initializeMemory(as: UInt8.self, repeating: byte)
    }
  }

  /// Copies `source` into the vector starting at `offset`.
  public func copyIn(_ source: UnsafeRawBufferPointer, at offset: Int = 0) {
    forEachPiece(offset, source.count) { piece, done in
      piece.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[done..<done + piece.count]))
    }
  }

  /// Copies the vector's bytes from `offset` into `destination` (its whole length).
  public func copyOut(to destination: UnsafeMutableRawBufferPointer, at offset: Int = 0) {
    forEachPiece(offset, destination.count) { piece, done in
      UnsafeMutableRawBufferPointer(rebasing: destination[done..<done + piece.count])
        .copyMemory(from: UnsafeRawBufferPointer(piece))
    }
  }

  /// Copies `length` bytes from `source` (starting at `sourceOffset`) into this
  /// vector at `offset`.
  public func copy(
    from source: IOVector, sourceOffset: Int = 0, at offset: Int = 0, count length: Int
  ) {
    source.forEachPiece(sourceOffset, length) { piece, done in
      copyIn(UnsafeRawBufferPointer(piece), at: offset + done)
    }
  }

  /// Whether `length` bytes from `offset` are all zero (wide-word test).
  public func isZero(at offset: Int = 0, count length: Int? = nil) -> Bool {
    let length = length ?? (count - offset)
    var zero = true
    forEachPiece(offset, length) { piece, _ in
      if zero && !isAllZero(UnsafeRawBufferPointer(piece)) { zero = false }
    }
    return zero
  }

  /// The vector's bytes as an array (tests and small metadata reads).
  public func toArray() -> [UInt8] {
    var result = [UInt8](repeating: 0, count: count)
    result.withUnsafeMutableBytes { copyOut(to: $0) }
    return result
  }
}
