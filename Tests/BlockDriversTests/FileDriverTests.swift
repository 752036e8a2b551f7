import BlockCore
import Foundation
import SystemPackage
import Testing

@testable import BlockDrivers

/// Reads, writes, flushes and opening of the `file` protocol driver against
/// real files.
@Suite("file driver: I/O and open")
@BlockActor
struct FileDriverTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  @Test("unaligned writes and reads round-trip and reach the file", arguments: FileBackend.allCases)
  func unalignedRoundTrip(backend: FileBackend) async throws {
    let path = try scratch.makeFile("disk", size: 65536)
    let node = try await backend.open(path)
    let data = pattern(5000)
    try await node.write(at: 1000, bytes: data)
    #expect(try await node.read(at: 1000, count: 5000) == data)
    #expect(try await node.read(at: 999, count: 1) == [0])
    await node.close()
    let disk = try contents(of: path)
    #expect(Array(disk[1000..<6000]) == data)
    #expect(disk.count == 65536)
  }

  @Test(
    "vectored requests with odd segments and more segments than IOV_MAX",
    arguments: FileBackend.allCases)
  func vectored(backend: FileBackend) async throws {
    let path = try scratch.makeFile("disk", size: 1 << 20)
    let node = try await backend.open(path)
    let data = pattern(12_000, seed: 3)
    // Write from 1500 segments of 8 bytes (more than one preadv can take).
    var source = IOVector()
    for index in 0..<1500 {
      let piece = IOVector(allocating: 8)
      data[index * 8..<index * 8 + 8].withUnsafeBytes { piece.copyIn($0) }
      source.append(piece)
    }
    try await node.write(at: 4096, from: source)
    // Read back into three segments of other sizes.
    let parts = [IOVector(allocating: 7), IOVector(allocating: 11_000), IOVector(allocating: 993)]
    var target = IOVector()
    for part in parts { target.append(part) }
    try await node.read(at: 4096, into: target)
    #expect(target.toArray() == data)
    await node.close()
    #expect(Array(try contents(of: path)[4096..<16096]) == data)
  }

  @Test("reads past the end of the file return zeroes", arguments: FileBackend.allCases)
  func readPastEnd(backend: FileBackend) async throws {
    let data = pattern(1000)
    let path = try scratch.makeFile("short", bytes: data)
    let node = try await backend.open(path)
    #expect(node.length == 1024)  // whole sectors, as QEMU reports it
    // Through the engine.
    let bytes = try await node.read(at: 500, count: 3000)
    #expect(Array(bytes[0..<500]) == Array(data[500...]))
    #expect(bytes[500...].allSatisfy { $0 == 0 })
    // The driver itself zero-fills the part of a request past the end.
    let iov = IOVector(allocating: 4096)
    iov.fill(0xff)
    try await node.driver.read(node, offset: 0, length: 4096, into: iov, flags: [])
    #expect(Array(iov.toArray()[0..<1000]) == data)
    #expect(iov.toArray()[1000...].allSatisfy { $0 == 0 })
    await node.close()
  }

  @Test("concurrent requests run off the actor and all land", arguments: FileBackend.allCases)
  func concurrentRequests(backend: FileBackend) async throws {
    let path = try scratch.makeFile("disk", size: 1 << 20)
    let node = try await backend.open(path)
    let writes = (0..<32).map { index in
      Task { @BlockActor in
        try await node.write(
          at: Int64(index) * 32768 + 7, bytes: pattern(30000, seed: UInt8(index)))
      }
    }
    for write in writes { try await write.value }
    for index in 0..<32 {
      let bytes = try await node.read(at: Int64(index) * 32768 + 7, count: 30000)
      #expect(bytes == pattern(30000, seed: UInt8(index)), "request \(index)")
    }
    await node.close()
  }

  @Test("flush reaches the driver and clears the write generation", arguments: FileBackend.allCases)
  func flush(backend: FileBackend) async throws {
    let path = try scratch.makeFile("disk", size: 8192)
    let node = try await backend.open(path)
    try await node.write(at: 0, bytes: pattern(4096))
    #expect(node.flushedGeneration != node.writeGeneration)
    try await node.flush()
    #expect(node.flushedGeneration == node.writeGeneration)
    await node.close()
    // A closed driver refuses to do I/O.
    let error = await expectBlockError {
      try await node.driver.flushToDisk(node)
    }
    #expect(error?.code == .ioError)
  }

  @Test("read-only nodes open the file O_RDONLY and refuse writes")
  func readOnly() async throws {
    let path = try scratch.makeFile("disk", bytes: pattern(4096))
    let node = try await openFileNode(path, readOnly: true)
    let fd = try #require(node.fileDriver.file?.fd)
    #expect(fcntl(fd, F_GETFL) & O_ACCMODE == O_RDONLY)
    #expect(try await node.read(at: 0, count: 4096) == pattern(4096))
    let error = await expectBlockError { try await node.write(at: 0, bytes: [1]) }
    #expect(error?.code == .notPermitted)
    await node.close()
  }

  @Test("open errors carry the errno and QEMU's messages")
  func openErrors() async throws {
    let missing = scratch.file("missing")
    var error = await expectBlockError { _ = try await openFileNode(missing) }
    #expect(error?.code == .noSuchFileOrDirectory)
    #expect(error?.message == "Could not open '\(missing)': No such file or directory")

    error = await expectBlockError { _ = try await openFileNode(scratch.path) }
    #expect(error?.message == "Could not open '\(scratch.path)': Is a directory")
    error = await expectBlockError { _ = try await openFileNode(scratch.path, readOnly: true) }
    #expect(error?.message == "'file' driver requires '\(scratch.path)' to be a regular file")

    let path = try scratch.makeFile("disk", size: 4096)
    error = await expectBlockError {
      _ = try await ImageOpener.open(filename: nil, options: DriverOptions(["driver": "file"]))
    }
    #expect(error?.message == "The 'file' block driver requires a file name")
    error = await expectBlockError { _ = try await openFileNode(path, extra: ["locking": "maybe"]) }
    #expect(error?.message == "invalid parameter value: maybe")
    error = await expectBlockError { _ = try await openFileNode(path, extra: ["aio": "native"]) }
    #expect(
      error?.message
        == "aio=native was specified, but it requires cache.direct=on, which was not specified.")
    error = await expectBlockError { _ = try await openFileNode(path, extra: ["bogus": "1"]) }
    #expect(error?.message == "Block protocol 'file' doesn't support the option 'bogus'")
    error = await expectBlockError { _ = try await openFileNode(path, forceShare: true) }
    #expect(error?.message == "force-share=on can only be used with read-only images")
    // Accepted: other AIO modes, a file: prefix.
    let node = try await openFileNode(
      "file:" + path, extra: ["aio": "io_uring", "locking": "on"])
    #expect(node.fileDriver.filename == path)
    await node.close()
  }

  @Test("the file driver is registered and reachable the ways QEMU names it")
  func registration() async throws {
    let path = try scratch.makeFile("disk", bytes: pattern(2048))
    let direct = try await ImageOpener.open(filename: path, format: "file")
    #expect(direct.driver.formatName == "file")
    #expect(direct.file == nil)
    #expect(direct.length == 2048)
    await direct.close()

    let json = try await ImageOpener.open(
      filename: "json:{\"driver\":\"file\",\"filename\":\"\(path)\"}")
    #expect(json.driver.formatName == "file")
    await json.close()

    let parsed = try DriverOptions.parse("driver=file,filename=\(path)")
    let node = try await ImageOpener.open(filename: nil, options: parsed)
    #expect(try await node.read(at: 0, count: 2048) == pattern(2048))
    await node.close()
  }
}
