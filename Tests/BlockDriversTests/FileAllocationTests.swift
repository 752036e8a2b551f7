import BlockCore
import Foundation
import Testing

@testable import BlockDrivers

/// Holes, zero-writes, discards and truncation of the `file` driver on a real
/// file system (the scratch directory's, which must support sparse files).
@Suite("file driver: allocation")
@BlockActor
struct FileAllocationTests {
  let scratch: ScratchDirectory
  static let mib: Int64 = 1 << 20

  init() throws { scratch = try ScratchDirectory() }

  @Test("block status reports holes as ZERO and data as DATA, both OFFSET_VALID")
  func holes() async throws {
    let path = try scratch.makeFile("sparse", size: 4 * Self.mib)
    let node = try await openFileNode(path)
    try await node.write(at: Self.mib, bytes: pattern(65536))
    try await node.flush()

    let hole = try await node.blockStatus(offset: 0, bytes: 4 * Self.mib, wantZero: true)
    #expect(hole.flags == [.zero, .offsetValid, .allocated])
    #expect(hole.count == Self.mib)
    #expect(hole.mapOffset == 0)
    #expect(hole.file === node)

    let data = try await node.blockStatus(offset: Self.mib, bytes: 3 * Self.mib, wantZero: true)
    #expect(data.flags == [.data, .offsetValid, .allocated])
    #expect(data.count == 65536)
    #expect(data.mapOffset == Self.mib)
    #expect(data.file === node)

    let tail = try await node.blockStatus(
      offset: Self.mib + 65536, bytes: 3 * Self.mib - 65536, wantZero: true)
    #expect(tail.flags.contains(.zero))
    #expect(tail.flags.contains(.eof))
    #expect(tail.count == 3 * Self.mib - 65536)

    // Without wantZero the driver need not look: everything is data.
    let cheap = try await node.blockStatus(offset: 0, bytes: 4 * Self.mib, wantZero: false)
    #expect(cheap.flags.contains(.data))
    #expect(cheap.count == 4 * Self.mib)
    await node.close()
  }

  @Test("discard punches a hole: blocks are freed and the range reads as zeroes")
  func discardPunchesHole() async throws {
    let path = try scratch.makeFile("disk", size: 2 * Self.mib)
    let node = try await openFileNode(path)
    try await node.write(at: 0, bytes: pattern(Int(2 * Self.mib)))
    try await node.flush()
    let before = try fileStatus(path).allocated
    #expect(before >= 2 * Self.mib)

    try await node.discard(at: 0, count: Self.mib)
    let after = try fileStatus(path).allocated
    #expect(after <= before - Self.mib)
    #expect(try fileStatus(path).size == 2 * Self.mib)
    #expect(try await node.read(at: 0, count: Int(Self.mib)).allSatisfy { $0 == 0 })
    let status = try await node.blockStatus(offset: 0, bytes: 2 * Self.mib, wantZero: true)
    #expect(status.flags.contains(.zero))
    #expect(status.count == Self.mib)
    await node.close()
  }

  @Test("zero-write with MAY_UNMAP deallocates, without it keeps the blocks")
  func zeroWrites() async throws {
    let path = try scratch.makeFile("disk", size: 2 * Self.mib)
    let node = try await openFileNode(path)
    try await node.write(at: 0, bytes: pattern(Int(2 * Self.mib)))
    try await node.flush()
    let before = try fileStatus(path).allocated

    try await node.writeZeroes(at: 0, count: Self.mib, flags: .mayUnmap)
    #expect(try await node.read(at: 0, count: Int(Self.mib)).allSatisfy { $0 == 0 })
    let unmapped = try fileStatus(path).allocated
    #expect(unmapped <= before - Self.mib)

    // NO_FALLBACK: the engine fails unless the driver's fallocate ladder zeroes it.
    try await node.writeZeroes(at: Self.mib, count: Self.mib, flags: .noFallback)
    #expect(try await node.read(at: Self.mib, count: Int(Self.mib)).allSatisfy { $0 == 0 })
    // FALLOC_FL_ZERO_RANGE (or the engine's zero buffer) keeps the space allocated.
    #expect(try fileStatus(path).allocated >= max(unmapped, Self.mib))
    #expect(node.fileDriver.fallocateSupport.contains(.punchHole))
    await node.close()
  }

  @Test("an unaligned zero-write zeroes exactly its bytes")
  func unalignedZeroWrite() async throws {
    let path = try scratch.makeFile("disk", bytes: pattern(16384))
    let node = try await openFileNode(path)
    try await node.writeZeroes(at: 1000, count: 10000, flags: .mayUnmap)
    var expected = pattern(16384)
    for index in 1000..<11000 { expected[index] = 0 }
    await node.close()
    #expect(try contents(of: path) == expected)
  }

  @Test("a zero-write past the end grows the file, with and without unmapping")
  func zeroWritePastEnd() async throws {
    let path = try scratch.makeFile("disk", bytes: pattern(65536))
    let node = try await openFileNode(path)
    try await node.writeZeroes(at: 65536, count: 65536, flags: .mayUnmap)
    #expect(try fileStatus(path).size == 131072)
    #expect(try await node.driver.length(node) == 131072)
    try await node.writeZeroes(at: 131072, count: 65536)
    #expect(try fileStatus(path).size == 196608)
    await node.close()
    let disk = try contents(of: path)
    #expect(Array(disk[0..<65536]) == pattern(65536))
    #expect(disk[65536...].allSatisfy { $0 == 0 })
  }

  @Test("truncate grows and shrinks the file, keeping the data below")
  func truncateGrowShrink() async throws {
    let path = try scratch.makeFile("disk", bytes: pattern(8192))
    let node = try await openFileNode(path)
    try await node.truncate(to: 3 * Self.mib)
    #expect(node.length == 3 * Self.mib)
    #expect(try fileStatus(path).size == 3 * Self.mib)
    #expect(try await node.read(at: 0, count: 8192) == pattern(8192))
    #expect(try await node.read(at: 8192, count: 8192).allSatisfy { $0 == 0 })

    try await node.truncate(to: 4096)
    #expect(node.length == 4096)
    #expect(try fileStatus(path).size == 4096)
    await node.close()
    #expect(try contents(of: path) == Array(pattern(8192)[0..<4096]))
  }

  @Test("truncate preallocation: falloc and full allocate, metadata and shrinking refuse")
  func truncatePreallocation() async throws {
    let path = try scratch.makeFile("disk", size: 4096)
    let node = try await openFileNode(path)
    try await node.truncate(to: 2 * Self.mib, preallocation: .falloc)
    #expect(try fileStatus(path).size == 2 * Self.mib)
    #expect(try fileStatus(path).allocated >= 2 * Self.mib - 4096)

    try await node.truncate(to: 4 * Self.mib, preallocation: .full)
    #expect(try fileStatus(path).size == 4 * Self.mib)
    #expect(try fileStatus(path).allocated >= 4 * Self.mib - 4096)
    #expect(try await node.read(at: 2 * Self.mib, count: Int(2 * Self.mib)).allSatisfy { $0 == 0 })

    var error = await expectBlockError {
      try await node.truncate(to: 5 * Self.mib, preallocation: .metadata)
    }
    #expect(error?.code == BlockError.notSupportedCode)
    #expect(error?.message == "Unsupported preallocation mode: metadata")
    error = await expectBlockError { try await node.truncate(to: Self.mib, preallocation: .falloc) }
    #expect(error?.message == "Cannot use preallocation for shrinking files")
    #expect(try fileStatus(path).size == 4 * Self.mib)
    await node.close()
  }

  @Test("growing an empty file allocates its first block, as QEMU does")
  func firstBlockAllocated() async throws {
    let path = try scratch.makeFile("empty")
    let node = try await openFileNode(path)
    try await node.truncate(to: Self.mib)
    let first = try await node.blockStatus(offset: 0, bytes: Self.mib, wantZero: true)
    #expect(first.flags.contains(.data))
    #expect(first.count == 4096)
    let rest = try await node.blockStatus(offset: 4096, bytes: Self.mib - 4096, wantZero: true)
    #expect(rest.flags.contains(.zero))
    await node.close()
  }

  @Test(
    "the data extent lseek found answers later queries inside it, and is forgotten by discard, zero-write and truncation"
  )
  func dataExtentCache() async throws {
    let path = try scratch.makeFile("cached", size: 4 * Self.mib)
    let node = try await openFileNode(path)
    let driver = try #require(node.driver as? FileDriver)
    try await node.write(at: 0, bytes: pattern(Int(2 * Self.mib)))
    try await node.flush()

    let first = try await node.blockStatus(offset: 0, bytes: 4 * Self.mib, wantZero: true)
    #expect(first.flags == [.data, .offsetValid, .allocated])
    #expect(first.count == 2 * Self.mib)
    #expect(driver.knownDataExtent == 0..<(2 * Self.mib))

    // A query inside the extent is answered from it (up to its end).
    let inside = try await node.blockStatus(offset: Self.mib, bytes: 3 * Self.mib, wantZero: true)
    #expect(inside.flags == [.data, .offsetValid, .allocated])
    #expect(inside.count == Self.mib)
    #expect(inside.mapOffset == Self.mib)

    // A discard inside the extent makes the next query look again.
    try await node.discard(at: Self.mib, count: 65536)
    #expect(driver.knownDataExtent == nil)
    let hole = try await node.blockStatus(offset: Self.mib, bytes: Self.mib, wantZero: true)
    #expect(hole.flags.contains(.zero))
    #expect(!hole.flags.contains(.data))
    #expect(hole.count == 65536)

    // So does a zero-write that may unmap.
    _ = try await node.blockStatus(offset: 0, bytes: Self.mib, wantZero: true)
    #expect(driver.knownDataExtent == 0..<Self.mib)
    try await node.writeZeroes(at: 0, count: 65536, flags: .mayUnmap)
    #expect(driver.knownDataExtent == nil)
    let zeroed = try await node.blockStatus(offset: 0, bytes: Self.mib, wantZero: true)
    #expect(zeroed.flags.contains(.zero))

    // And truncation: the area regrown after a shrink reads as a hole.
    _ = try await node.blockStatus(offset: 65536, bytes: Self.mib, wantZero: true)
    #expect(driver.knownDataExtent != nil)
    try await node.truncate(to: Self.mib / 2, exact: true, preallocation: .off)
    try await node.truncate(to: 4 * Self.mib, exact: true, preallocation: .off)
    #expect(driver.knownDataExtent == nil)
    let regrown = try await node.blockStatus(offset: Self.mib / 2, bytes: Self.mib, wantZero: true)
    #expect(regrown.flags.contains(.zero))
    #expect(!regrown.flags.contains(.data))
    await node.close()
  }
}
