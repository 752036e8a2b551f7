import BlockCore
import Testing

@Suite("IOVector, aligned buffers, zero detection and limits")
struct IOVectorTests {
  /// A vector of three segments (5, 0 and 11 bytes long) over two buffers.
  func segmented() -> (IOVector, AlignedBuffer, AlignedBuffer) {
    let first = AlignedBuffer(count: 5, alignment: 64, zeroed: true)
    let second = AlignedBuffer(count: 11, alignment: 64, zeroed: true)
    var iov = IOVector()
    iov.append(first)
    iov.append(second, range: 3..<3)
    iov.append(second)
    return (iov, first, second)
  }

  @Test("aligned buffers start at the requested alignment")
  func alignment() {
    for alignment in [512, 4096, 65536] {
      let buffer = AlignedBuffer(count: 100, alignment: alignment)
      buffer.withUnsafeBytes { #expect(Int(bitPattern: $0.baseAddress!) % alignment == 0) }
    }
  }

  @Test("copy in and out across segment boundaries")
  func copyAcrossSegments() {
    let (iov, _, _) = segmented()
    #expect(iov.count == 16)
    #expect(iov.segmentCount == 2)
    let source: [UInt8] = Array(1...16)
    source.withUnsafeBytes { iov.copyIn($0) }
    #expect(iov.toArray() == source)
    var middle = [UInt8](repeating: 0, count: 6)
    middle.withUnsafeMutableBytes { iov.copyOut(to: $0, at: 3) }
    #expect(middle == [4, 5, 6, 7, 8, 9])
  }

  @Test("slices share memory; fill and copy between vectors")
  func slicesShareMemory() {
    let (iov, first, _) = segmented()
    let slice = iov.slice(3, 4)
    #expect(slice.count == 4)
    slice.fill(0xAA)
    #expect(iov.toArray() == [0, 0, 0, 0xAA, 0xAA, 0xAA, 0xAA] + [UInt8](repeating: 0, count: 9))
    #expect(first.toArray()[4] == 0xAA)
    let other = IOVector(allocating: 16, zeroed: true)
    other.copy(from: iov, sourceOffset: 3, at: 10, count: 4)
    #expect(Array(other.toArray()[9...14]) == [0, 0xAA, 0xAA, 0xAA, 0xAA, 0])
  }

  @Test("zero detection at every offset and length around word boundaries")
  func zeroDetection() {
    let buffer = AlignedBuffer(count: 300, alignment: 64, zeroed: true)
    let iov = IOVector(buffer)
    #expect(iov.isZero())
    for position in [0, 1, 7, 8, 63, 64, 65, 127, 200, 299] {
      buffer.withUnsafeMutableBytes { $0[position] = 1 }
      for start in [0, 1, 3, 8, 9] where start <= position {
        #expect(!iov.isZero(at: start, count: position - start + 1))
        #expect(iov.isZero(at: start, count: position - start))
      }
      buffer.withUnsafeMutableBytes { $0[position] = 0 }
    }
  }

  @Test("the first mismatch between two vectors split at different segment boundaries")
  func firstMismatch() {
    let (iov, _, _) = segmented()
    let source: [UInt8] = Array(1...16)
    source.withUnsafeBytes { iov.copyIn($0) }
    var other = IOVector(allocating: 9)
    other.append(IOVector(allocating: 7))
    other.copy(from: iov, count: 16)
    #expect(iov.firstMismatch(with: other) == nil)
    for position in [0, 4, 5, 8, 9, 15] {
      other.fill(0xEE, at: position, count: 1)
      #expect(iov.firstMismatch(with: other) == position)
      #expect(other.firstMismatch(with: iov) == position)
      #expect(iov.firstMismatch(with: other, at: position + 1, count: 15 - position) == nil)
      other.fill(UInt8(position + 1), at: position, count: 1)
    }
  }

  /// A vector is the only owner of its memory once the buffers it was built
  /// from go out of scope; its bytes must stay valid as long as it lives.
  @Test("a vector keeps its buffers alive after their other references are gone")
  func vectorOwnsItsBuffers() {
    func makeVector() -> IOVector {
      var iov = IOVector()
      for byte: UInt8 in 1...4 {
        let buffer = AlignedBuffer(count: 4096)
        buffer.fill(byte)
        iov.append(buffer, range: 1..<4095)
      }
      return iov.slice(4094, 4094 * 2)
    }
    let iov = makeVector()
    let bytes = iov.toArray()
    #expect(bytes == [UInt8](repeating: 2, count: 4094) + [UInt8](repeating: 3, count: 4094))
    #expect(iov.withUnsafeSegments { $0.map(\.count) } == [4094, 4094])
  }

  @Test("limits merge the larger optimal sizes and the smaller non-zero maxima")
  func limitsMerge() {
    var parent = BlockLimits()
    parent.maxTransfer = 0
    parent.optTransfer = 4096
    var child = BlockLimits()
    child.maxTransfer = 65536
    child.optTransfer = 65536
    child.minMemAlignment = 512
    child.maxIOV = 1024
    parent.merge(child)
    #expect(parent.maxTransfer == 65536)
    #expect(parent.optTransfer == 65536)
    #expect(parent.minMemAlignment == 512)
    #expect(parent.maxIOV == 1024)
    var other = BlockLimits()
    other.maxTransfer = 4096
    parent.merge(other)
    #expect(parent.maxTransfer == 4096)
    #expect(BlockLimits.minNonZero(0, 0) == 0)
  }

  @Test("request flags keep QEMU's bit values")
  func flagValues() {
    #expect(RequestFlags.fua.rawValue == 0x10)
    #expect(RequestFlags.noFallback.rawValue == 0x100)
    #expect(RequestFlags([.zeroWrite, .mayUnmap]).description == "[ZERO_WRITE,MAY_UNMAP]")
  }
}
