import BlockCore
import Foundation
import Testing

@testable import BlockDrivers

/// The `raw` format over a `file` child: pass-through, windows (offset,
/// size), block status, zero-writes, discard, truncate and registration.
@Suite("raw format driver")
@BlockActor
struct RawDriverTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  func openRaw(
    _ path: String, readOnly: Bool = false, options: [String: String] = [:]
  ) async throws -> BlockNode {
    let context = OpenContext(node: NodeOptions(readOnly: readOnly, discard: .unmap))
    return try await ImageOpener.open(
      filename: path, format: "raw", options: DriverOptions(options), context: context)
  }

  @Test("raw over file: names, length and a round trip that reaches the file")
  func passThrough() async throws {
    let path = try scratch.makeFile("disk.img", bytes: pattern(65536))
    let node = try await openRaw(path)
    #expect(node.driver.formatName == "raw")
    let file = try #require(node.file)
    #expect(file.driver.formatName == "file")
    #expect(node.length == 65536)
    try await node.write(at: 100, bytes: pattern(3000, seed: 5))
    #expect(try await node.read(at: 100, count: 3000) == pattern(3000, seed: 5))
    try await node.flush()
    #expect(file.flushedGeneration == file.writeGeneration)
    await node.close()
    var expected = pattern(65536)
    expected.replaceSubrange(100..<3100, with: pattern(3000, seed: 5))
    #expect(try contents(of: path) == expected)
  }

  @Test("without a format, probing opens raw over file")
  func probing() async throws {
    let path = try scratch.makeFile("disk.img", bytes: pattern(4096))
    let node = try await ImageOpener.open(filename: path)
    #expect(node.driver.formatName == "raw")
    #expect(node.file?.driver.formatName == "file")
    #expect(try await node.read(at: 0, count: 4096) == pattern(4096))
    await node.close()

    let spelled = try await ImageOpener.open(
      filename: nil,
      options: try DriverOptions.parse("driver=raw,file.driver=file,file.filename=\(path)"))
    #expect(spelled.length == 4096)
    await spelled.close()
  }

  @Test("an offset and size window maps onto the file")
  func window() async throws {
    let path = try scratch.makeFile("disk.img", bytes: pattern(65536))
    let node = try await openRaw(path, options: ["offset": "4096", "size": "8192"])
    #expect(node.length == 8192)
    #expect(try await node.read(at: 0, count: 8192) == Array(pattern(65536)[4096..<12288]))
    try await node.write(at: 10, bytes: [1, 2, 3])
    // Writes may not leave the window.
    let error = await expectBlockError { try await node.write(at: 8190, bytes: [1, 2, 3, 4]) }
    #expect(error?.code == .noSpace)
    let backend = BlockBackend(root: node)
    let backendError = await expectBlockError {
      try await backend.write(at: 8192, from: IOVector(allocating: 512))
    }
    #expect(backendError?.code == .ioError)
    await backend.close()
    let disk = try contents(of: path)
    #expect(Array(disk[4106..<4109]) == [1, 2, 3])
    #expect(Array(disk[12286..<12288]) == Array(pattern(65536)[12286..<12288]))
  }

  @Test("an offset alone runs the disk to the end of the file")
  func offsetOnly() async throws {
    let path = try scratch.makeFile("disk.img", bytes: pattern(65536))
    let node = try await openRaw(path, options: ["offset": "1024"])
    #expect(node.length == 64512)
    #expect(try await node.read(at: 64000, count: 512) == Array(pattern(65536)[65024..<65536]))
    // Truncate resizes the file to offset + length.
    try await node.truncate(to: 100_000)
    #expect(node.length == 100_352)  // whole sectors, as QEMU reports it
    #expect(try fileStatus(path).size == 101_024)
    await node.close()
  }

  @Test("window errors use QEMU's messages")
  func windowErrors() async throws {
    let path = try scratch.makeFile("small.img", size: 2048)
    var error = await expectBlockError { _ = try await openRaw(path, options: ["offset": "4096"]) }
    #expect(
      error?.message == "Offset (4096) cannot be greater than size of the containing file (2048)")
    error = await expectBlockError {
      _ = try await openRaw(path, options: ["offset": "512", "size": "2048"])
    }
    #expect(
      error?.message
        == "The sum of offset (512) and size (2048) has to be smaller or equal to the  actual size of the containing file (2048)"
    )
    error = await expectBlockError {
      _ = try await openRaw(path, options: ["offset": "512", "size": "1000"])
    }
    #expect(error?.message == "Specified size is not multiple of 512")
    error = await expectBlockError { _ = try await openRaw(path, options: ["bogus": "1"]) }
    #expect(error?.message == "Block format 'raw' does not support the option 'bogus'")
    // A failed open leaves no lock behind: the file opens for writing again.
    let node = try await openRaw(path)
    await node.close()
  }

  @Test("a fixed-size window cannot be resized")
  func fixedSizeTruncate() async throws {
    let path = try scratch.makeFile("disk.img", size: 65536)
    let node = try await openRaw(path, options: ["size": "4096"])
    let error = await expectBlockError { try await node.truncate(to: 8192) }
    #expect(error?.code == BlockError.notSupportedCode)
    #expect(error?.message == "Cannot resize fixed-size raw disks")
    #expect(try fileStatus(path).size == 65536)
    await node.close()
  }

  @Test("block status is the file's, shifted by the window offset")
  func blockStatus() async throws {
    let path = try scratch.makeFile("sparse.img", size: 1 << 20)
    let node = try await openRaw(path, options: ["offset": "65536"])
    let file = try #require(node.file)
    try await node.write(at: 131072, bytes: pattern(65536))
    try await node.flush()

    let hole = try await node.blockStatus(offset: 0, bytes: node.length, wantZero: true)
    #expect(hole.flags.contains(.zero))
    #expect(hole.count == 131072)
    #expect(hole.flags.contains(.offsetValid))
    #expect(hole.mapOffset == 65536)
    #expect(hole.file === file)

    let data = try await node.blockStatus(offset: 131072, bytes: 65536 * 4, wantZero: true)
    #expect(data.flags.contains(.data))
    #expect(data.flags.contains(.allocated))
    #expect(data.count == 65536)
    #expect(data.mapOffset == 196608)
    #expect(data.file === file)
    await node.close()
  }

  @Test("zero-writes and discards pass to the file and free its blocks")
  func zeroesAndDiscard() async throws {
    let path = try scratch.makeFile("disk.img", size: 4 << 20)
    let node = try await openRaw(path, options: ["offset": "1048576"])
    try await node.write(at: 0, bytes: pattern(3 << 20))
    try await node.flush()
    let before = try fileStatus(path).allocated

    try await node.writeZeroes(at: 0, count: 1 << 20, flags: .mayUnmap)
    let afterZero = try fileStatus(path).allocated
    #expect(afterZero <= before - (1 << 20))
    #expect(try await node.read(at: 0, count: 1 << 20).allSatisfy { $0 == 0 })

    try await node.discard(at: 1 << 20, count: 1 << 20)
    #expect(try fileStatus(path).allocated <= afterZero - (1 << 20))
    // The bytes before the window are untouched.
    #expect(try await node.file!.read(at: 0, count: 4096).allSatisfy { $0 == 0 })
    #expect(
      try await node.read(at: 2 << 20, count: 4096)
        == Array(pattern(3 << 20)[(2 << 20)...].prefix(4096)))
    await node.close()
  }

  @Test("read-only raw refuses writes and holds the file read-only")
  func readOnly() async throws {
    let path = try scratch.makeFile("disk.img", bytes: pattern(4096))
    let node = try await openRaw(path, readOnly: true)
    #expect(node.file?.isReadOnly == true)
    let error = await expectBlockError { try await node.write(at: 0, bytes: [1]) }
    #expect(error?.code == .notPermitted)
    #expect(try await node.read(at: 0, count: 4096) == pattern(4096))
    await node.close()
  }
}
