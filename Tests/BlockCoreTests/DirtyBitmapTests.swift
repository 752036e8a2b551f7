import BlockCore
import Testing

/// ``DirtyBitmap`` as a bitmap of granularity-sized chunks: marking,
/// resetting and walking ranges across word boundaries against a plain set
/// of chunks, merging bitmaps of other granularities, and disk-sized
/// ranges.
@Suite @BlockActor struct DirtyBitmapTests {
  /// The chunks of `granularity` bytes a set of ranges covers, merged into
  /// ranges: the reference the bitmap is compared against.
  static func ranges(of chunks: Set<Int64>, granularity: Int64) -> [Range<Int64>] {
    var result: [Range<Int64>] = []
    for chunk in chunks.sorted() {
      let range = chunk * granularity..<(chunk + 1) * granularity
      if let last = result.last, last.upperBound == range.lowerBound {
        result[result.count - 1] = last.lowerBound..<range.upperBound
      } else {
        result.append(range)
      }
    }
    return result
  }

  @Test("random marks and resets agree with a set of chunks", arguments: [512, 4096, 65536])
  func randomOperationsMatchASet(granularity: Int64) {
    let bitmap = DirtyBitmap(name: "b", granularity: granularity)
    var chunks = Set<Int64>()
    var state: UInt64 = 0x1234_5678 &* UInt64(granularity)
    func next(_ bound: Int64) -> Int64 {
      state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      return Int64((state >> 33) % UInt64(bound))
    }
    let span = granularity * 700
    for step in 0..<400 {
      let offset = next(span)
      let bytes = next(granularity * 150) + 1
      let first = offset / granularity
      let last = (offset + bytes - 1) / granularity
      if step % 3 == 2 {
        bitmap.reset(offset: offset, bytes: bytes)
        chunks.subtract(first...last)
      } else {
        bitmap.mark(offset: offset, bytes: bytes)
        chunks.formUnion(first...last)
      }
      #expect(bitmap.dirtyBytes == Int64(chunks.count) * granularity, "step \(step)")
    }
    #expect(bitmap.dirtyRanges == Self.ranges(of: chunks, granularity: granularity))
    for probe in stride(from: 0, to: span + 2 * granularity, by: Int(granularity / 2)) {
      #expect(bitmap.isDirty(Int64(probe)) == chunks.contains(Int64(probe) / granularity))
    }
    let window = granularity * 100 + 7..<granularity * 300 + 3
    let expected = Self.ranges(of: chunks, granularity: granularity).compactMap {
      range -> Range<Int64>? in
      let start = max(range.lowerBound, window.lowerBound)
      let end = min(range.upperBound, window.upperBound)
      return start < end ? start..<end : nil
    }
    #expect(bitmap.dirtyRanges(in: window) == expected)
  }

  @Test("a whole terabyte is one range of 2^24 chunks")
  func terabyteRange() {
    let bitmap = DirtyBitmap(name: "b", granularity: 65536)
    let tebibyte: Int64 = 1 << 40
    bitmap.mark(offset: 0, bytes: tebibyte)
    #expect(bitmap.dirtyBytes == tebibyte)
    #expect(bitmap.dirtyRanges == [0..<tebibyte])
    bitmap.reset(offset: 65536, bytes: tebibyte - 2 * 65536)
    #expect(bitmap.dirtyRanges == [0..<65536, tebibyte - 65536..<tebibyte])
    bitmap.clear()
    #expect(bitmap.dirtyRanges.isEmpty && bitmap.dirtyBytes == 0)
  }

  @Test("merging marks the other bitmap's ranges at this granularity, even when disabled")
  func mergeAcrossGranularities() {
    let fine = DirtyBitmap(name: "fine", granularity: 512)
    fine.mark(offset: 1000, bytes: 10)
    fine.mark(offset: 70_000, bytes: 512)
    let coarse = DirtyBitmap(name: "coarse", granularity: 65536)
    coarse.isEnabled = false
    coarse.mark(offset: 0, bytes: 1)
    #expect(coarse.dirtyRanges.isEmpty)
    coarse.merge(fine)
    #expect(coarse.dirtyRanges == [0..<131_072])
    fine.merge(coarse)
    #expect(fine.dirtyRanges == [0..<131_072])
  }

  @Test("a disabled bitmap ignores marks but takes explicit sets")
  func disabledBitmap() {
    let bitmap = DirtyBitmap(name: "b", granularity: 4096)
    bitmap.isEnabled = false
    bitmap.mark(offset: 0, bytes: 4096)
    #expect(bitmap.dirtyRanges.isEmpty)
    bitmap.set(offset: 8192, bytes: 1)
    #expect(bitmap.dirtyRanges == [8192..<12_288])
    bitmap.reset(offset: 1 << 30, bytes: 4096)
    #expect(bitmap.dirtyRanges == [8192..<12_288])
  }
}
