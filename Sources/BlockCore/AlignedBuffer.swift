/// A heap buffer whose start is aligned to a given power of two, freed when the
/// last reference goes away.
///
/// Bounce and padding buffers are aligned to the node's memory alignment so that
/// drivers using O_DIRECT can hand them to the kernel. The buffer is
/// `@unchecked Sendable`: its bytes are handed to I/O threads while the request
/// that owns it waits, exactly as QEMU hands a bounce buffer to a worker thread.
public final class AlignedBuffer: @unchecked Sendable {
  /// The buffer's bytes.
  public let bytes: UnsafeMutableRawBufferPointer

  /// Allocates `count` bytes aligned to `alignment` (rounded up to a pointer's
  /// alignment), optionally zero-filled.
  public init(count: Int, alignment: Int = 4096, zeroed: Bool = false) {
    precondition(count >= 0, "negative buffer size")
    let align = max(alignment, MemoryLayout<UnsafeRawPointer>.alignment)
    let pointer = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: align)
    bytes = UnsafeMutableRawBufferPointer(start: pointer, count: count)
    if zeroed { bytes.initializeMemory(as: UInt8.self, repeating: 0) }
  }

  /// The number of bytes.
  public var count: Int { bytes.count }

  deinit { bytes.baseAddress?.deallocate() }
}
