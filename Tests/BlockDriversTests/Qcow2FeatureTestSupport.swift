import BlockCore
import Foundation
import Testing

@testable import BlockDrivers

/// Helpers shared by the tests of the optional qcow2 features (zstd, external
/// data files, extended L2 entries).
enum Qcow2FeatureTests {
  /// Unaligned (offset, length) pairs crossing sector, subcluster and cluster
  /// boundaries, within a guest disk of `size` bytes.
  static func oddGrid(size: Int64) -> [(Int64, Int)] {
    let starts: [Int64] = [0, 1, 511, 513, 2047, 4095, 4097, 65535, 65537, 99_999, 131_071]
    let lengths = [1, 3, 511, 1000, 4097, 65_537, 200_001]
    return starts.flatMap { start in
      lengths.compactMap { length in
        let offset = (start * 7 + Int64(length) * 13) % max(size - 1, 1)
        return offset + Int64(length) <= size ? (offset, length) : nil
      }
    } + [(size - 1, 1), (size - 4097, 4097)]
  }

  /// Reads the odd grid through Spindle and compares it with `expected`.
  @BlockActor
  static func expectGridReads(
    _ node: BlockNode, expected: [UInt8], sourceLocation: SourceLocation = #_sourceLocation
  ) async throws {
    for (offset, length) in oddGrid(size: Int64(expected.count)) {
      let actual = try await node.read(at: offset, count: length)
      #expect(
        actual == Array(expected[Int(offset)..<Int(offset) + length]),
        "read \(offset)+\(length)", sourceLocation: sourceLocation)
    }
  }

  /// Bytes that compress partly: text, then noise, then zeroes.
  static func mixedContent(_ count: Int, seed: UInt64 = 0x1234_5678) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    var state = seed
    for index in 0..<count / 2 {
      if index < count / 4 {
        bytes[index] = UInt8(ascii: "a") + UInt8(index % 26)
      } else {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        bytes[index] = UInt8(truncatingIfNeeded: state >> 33)
      }
    }
    return bytes
  }

  /// A copy of `bytes` in a fresh I/O vector.
  static func vector(_ bytes: [UInt8]) -> IOVector {
    let iov = IOVector(allocating: bytes.count)
    bytes.withUnsafeBytes { iov.copyIn($0) }
    return iov
  }

  /// Two files with identical bytes, or a failure naming the first difference.
  static func expectSameFiles(
    _ mine: String, _ theirs: String, sourceLocation: SourceLocation = #_sourceLocation
  ) throws {
    let a = try contents(of: mine)
    let b = try contents(of: theirs)
    let firstDifference = (0..<min(a.count, b.count)).first { a[$0] != b[$0] }
    #expect(
      a == b, "sizes \(a.count)/\(b.count), first difference at \(firstDifference ?? -1)",
      sourceLocation: sourceLocation)
  }
}
