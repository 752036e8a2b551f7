#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// A list of memory segments that one request reads into or writes from (QEMU's
/// `QEMUIOVector`).
///
/// Segments point into ``AlignedBuffer``s that the vector keeps alive. Slicing
/// and concatenating make new segment lists over the same memory; nothing is
/// copied until ``copyIn(_:at:)``, ``copyOut(to:at:)`` or
/// ``fill(_:at:count:)`` is called. The raw segments are reached only inside
/// ``withUnsafeSegments(_:)``, which keeps their buffers alive for the call:
/// no pointer into a vector's memory outlives the buffers that own it.
///
/// The vector is `@unchecked Sendable` because its segments travel to I/O threads
/// while the request that owns the memory (and holds the vector) waits for them.
public struct IOVector: @unchecked Sendable {
  /// The memory segments, in order; each lies inside one of `owners`.
  private var segments: [UnsafeMutableRawBufferPointer] = []
  /// Total number of bytes across segments.
  public private(set) var count: Int = 0
  /// The buffers the segments point into, kept alive as long as the vector.
  private var owners: [AlignedBuffer] = []

  /// An empty vector.
  public init() {}

  /// A vector over a whole aligned buffer, keeping it alive.
  public init(_ buffer: AlignedBuffer) {
    append(buffer)
  }

  /// A vector over the bytes `range` of an aligned buffer, keeping it alive.
  public init(_ buffer: AlignedBuffer, range: Range<Int>) {
    append(buffer, range: range)
  }

  /// A vector over a freshly allocated buffer of `count` bytes.
  public init(allocating count: Int, alignment: Int = 4096, zeroed: Bool = false) {
    self.init(AlignedBuffer(count: count, alignment: alignment, zeroed: zeroed))
  }

  /// A vector over a fresh buffer holding a copy of `bytes`.
  public init(copying bytes: [UInt8], alignment: Int = 4096) {
    self.init(allocating: bytes.count, alignment: alignment)
    bytes.withUnsafeBytes { copyIn($0) }
  }

  /// The number of segments (for drivers that limit the segments of one request).
  public var segmentCount: Int { segments.count }

  /// Appends the bytes `range` of `buffer` (all of it when nil) as one segment,
  /// keeping the buffer alive as long as the vector.
  public mutating func append(_ buffer: AlignedBuffer, range: Range<Int>? = nil) {
    let range = range ?? 0..<buffer.count
    precondition(range.lowerBound >= 0 && range.upperBound <= buffer.count, "range out of buffer")
    owners.append(buffer)
    guard !range.isEmpty else { return }
    segments.append(
      buffer.withUnsafeMutableBytes { UnsafeMutableRawBufferPointer(rebasing: $0[range]) })
    count += range.count
  }

  /// Appends every segment of another vector.
  public mutating func append(_ other: IOVector) {
    owners.append(contentsOf: other.owners)
    segments.append(contentsOf: other.segments)
    count += other.count
  }

  /// Calls `body` with the vector's segments (empty ones left out). The
  /// pointers are valid only during the call: every buffer they point into is
  /// kept alive until `body` returns. They must not be stored or returned.
  @inlinable
  public func withUnsafeSegments<Result>(
    _ body: ([UnsafeMutableRawBufferPointer]) throws -> Result
  ) rethrows -> Result {
    defer { extendLifetime() }
    return try body(unsafeSegments)
  }

  /// Calls the asynchronous `body` with the vector's segments, on the caller's
  /// isolation. The pointers are valid until `body` returns (an I/O submitted
  /// to the kernel or a thread must complete before then) and must not be
  /// stored or returned.
  @inlinable
  public func withUnsafeSegments<Result>(
    isolation: isolated (any Actor)? = #isolation,
    _ body: ([UnsafeMutableRawBufferPointer]) async throws -> Result
  ) async rethrows -> Result {
    defer { extendLifetime() }
    return try await body(unsafeSegments)
  }

  @usableFromInline var unsafeSegments: [UnsafeMutableRawBufferPointer] { segments }

  @usableFromInline func extendLifetime() { withExtendedLifetime(owners) {} }

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
    defer { extendLifetime() }
    var position = 0
    var done = 0
    for segment in unsafeSegments where done < length {
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

  /// The first byte, counted from `offset`, where `length` bytes of this vector
  /// and of `other` (both from `offset`) differ; nil when they are equal
  /// (QEMU's `qemu_iovec_compare`).
  public func firstMismatch(with other: IOVector, at offset: Int = 0, count length: Int? = nil)
    -> Int?
  {
    let length = length ?? (count - offset)
    var mismatch: Int?
    forEachPiece(offset, length) { piece, done in
      guard mismatch == nil else { return }
      other.forEachPiece(offset + done, piece.count) { otherPiece, within in
        guard mismatch == nil,
          memcmp(piece.baseAddress! + within, otherPiece.baseAddress!, otherPiece.count) != 0
        else { return }
        let mine = UnsafeRawBufferPointer(rebasing: piece[within..<within + otherPiece.count])
        let index = zip(mine, otherPiece).prefix { $0 == $1 }.count
        mismatch = done + within + index
      }
    }
    return mismatch
  }

  /// The vector's bytes as an array (tests and small metadata reads).
  public func toArray() -> [UInt8] {
    var result = [UInt8](repeating: 0, count: count)
    result.withUnsafeMutableBytes { copyOut(to: $0) }
    return result
  }
}
