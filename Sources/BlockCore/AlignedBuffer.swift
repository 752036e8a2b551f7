/// A heap buffer whose start is aligned to a given power of two, freed when the
/// last reference goes away.
///
/// Bounce and padding buffers are aligned to the node's memory alignment so that
/// drivers using O_DIRECT can hand them to the kernel.
///
/// The memory is reached only inside ``withUnsafeMutableBytes(_:)`` and
/// ``withUnsafeBytes(_:)``: the buffer is alive for the whole call (it is the
/// receiver), and the pointer handed to the closure must not escape it. No
/// property hands out a pointer, so no pointer can outlive the buffer that owns
/// it (the optimiser may release an object right after its last use, which
/// turned a stored `bytes` pointer into a use-after-free).
///
/// The buffer is `@unchecked Sendable`: its bytes are handed to I/O threads
/// while the request that owns it waits (holding the buffer), exactly as QEMU
/// hands a bounce buffer to a worker thread; one request writes it at a time.
public final class AlignedBuffer: @unchecked Sendable {
  private let storage: UnsafeMutableRawBufferPointer

  /// Allocates `count` bytes aligned to `alignment` (rounded up to a pointer's
  /// alignment), optionally zero-filled.
  public init(count: Int, alignment: Int = 4096, zeroed: Bool = false) {
    precondition(count >= 0, "negative buffer size")
    let align = max(alignment, MemoryLayout<UnsafeRawPointer>.alignment)
    let pointer = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: align)
    storage = UnsafeMutableRawBufferPointer(start: pointer, count: count)
    if zeroed { storage.initializeMemory(as: UInt8.self, repeating: 0) }
  }

  /// The number of bytes.
  public var count: Int { storage.count }

  /// Calls `body` with the buffer's bytes; the pointer is valid only during the
  /// call and must not be stored or returned.
  @inlinable
  public func withUnsafeMutableBytes<Result>(
    _ body: (UnsafeMutableRawBufferPointer) throws -> Result
  ) rethrows -> Result {
    defer { withExtendedLifetime(self) {} }
    return try body(unsafeStorage)
  }

  /// Calls `body` with the buffer's bytes, read-only; the pointer is valid only
  /// during the call and must not be stored or returned.
  @inlinable
  public func withUnsafeBytes<Result>(_ body: (UnsafeRawBufferPointer) throws -> Result)
    rethrows -> Result
  {
    defer { withExtendedLifetime(self) {} }
    return try body(UnsafeRawBufferPointer(unsafeStorage))
  }

  /// The buffer's bytes as an array (a copy).
  public func toArray() -> [UInt8] { Array(storage) }

  /// Sets every byte to `byte`.
  public func fill(_ byte: UInt8) { storage.initializeMemory(as: UInt8.self, repeating: byte) }

  @usableFromInline var unsafeStorage: UnsafeMutableRawBufferPointer { storage }

  deinit { storage.baseAddress?.deallocate() }
}
