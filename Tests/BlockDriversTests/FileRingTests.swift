import BlockCore
import Foundation
import Testing

@testable import BlockDrivers

#if canImport(Glibc)
  import Glibc
#endif

/// The io_uring submission path of the file driver: results, errors, short
/// transfers, and the fallbacks to the thread pool.
@Suite("file driver: io_uring")
@BlockActor
struct FileRingTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  /// The process's ring, or nil (and the test passes vacuously) where the
  /// kernel has no io_uring.
  func sharedRing() -> FileRing? {
    if FileRing.shared == nil { #expect(FileRing.setupError != 0) }
    return FileRing.shared
  }

  @Test("aio=threads nodes use the thread pool")
  func threadsBackend() async throws {
    let path = try scratch.makeFile("disk", size: 8192)
    let node = try await openFileNode(path, aio: "threads")
    #expect(!node.fileDriver.usesIOURing)
    await node.close()
  }

  @Test("without aio= the ring is used (when there is one); aio=threads keeps the pool")
  func defaultBackend() async throws {
    let path = try scratch.makeFile("disk", size: 8192)
    let hasRing = FileRing.shared != nil
    for (aio, expected) in [
      (nil, hasRing && FileOpenOptions.ioURingByDefault), ("threads", false), ("io_uring", hasRing),
    ] {
      let node = try await openFileNode(path, aio: aio)
      #expect(node.fileDriver.usesIOURing == expected, "aio=\(aio ?? "(default)")")
      try await node.write(at: 0, bytes: pattern(4096))
      #expect(try await node.read(at: 0, count: 4096) == pattern(4096))
      try await node.flush()
      await node.close()
    }
    var options = FileOpenOptions(filename: path)
    #expect(options.aio == .threads)
    #expect(options.submitsToIOURing == FileOpenOptions.ioURingByDefault)
    options.aio = .threads
    #expect(!options.submitsToIOURing)
  }

  @Test("reads, writes and fdatasync return the CQE's result; a read at the end is short")
  func results() async throws {
    guard let ring = sharedRing() else { return }
    let path = try scratch.makeFile("disk", bytes: pattern(1000))
    let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
    try #require(fd >= 0)
    defer { _ = Glibc.close(fd) }
    let buffer = IOVector(allocating: 4096)
    #expect(await ring.read(fd, into: buffer, at: 0) == .done(1000))
    #expect(Array(buffer.toArray()[0..<1000]) == pattern(1000))
    #expect(await ring.read(fd, into: buffer, at: 1000) == .done(0))
    buffer.fill(5)
    #expect(await ring.write(fd, from: buffer.slice(0, 100), at: 10) == .done(100))
    #expect(await ring.dataSync(fd) == .done(0))
    #expect(Array(try contents(of: path)[10..<110]) == [UInt8](repeating: 5, count: 100))
  }

  @Test("an errno from the kernel comes back as the CQE's error and the driver throws it")
  func errors() async throws {
    guard let ring = sharedRing() else { return }
    let path = try scratch.makeFile("disk", bytes: pattern(4096))
    let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
    try #require(fd >= 0)
    defer { _ = Glibc.close(fd) }
    let buffer = IOVector(allocating: 512)
    #expect(await ring.write(fd, from: buffer, at: 0) == .failed(EBADF))
    #expect(await ring.read(-1, into: buffer, at: 0) == .failed(EBADF))
  }

  @Test("a short read through the driver continues with the rest of the request")
  func shortReadContinues() async throws {
    guard sharedRing() != nil else { return }
    // 1000 bytes, then a request across the end: the first CQE is short, the
    // resubmitted rest reads 0 bytes and the driver zero-fills.
    let path = try scratch.makeFile("disk", bytes: pattern(1000))
    let node = try await openFileNode(path, aio: "io_uring")
    #expect(node.fileDriver.usesIOURing)
    let iov = IOVector(allocating: 3000)
    iov.fill(0xee)
    try await node.driver.read(node, offset: 200, length: 3000, into: iov, flags: [])
    #expect(Array(iov.toArray()[0..<800]) == Array(pattern(1000)[200...]))
    #expect(iov.toArray()[800...].allSatisfy { $0 == 0 })
    await node.close()
  }

  @Test("more requests than the ring holds all go through it: the rest wait for a slot")
  func moreRequestsThanTheRingHolds() async throws {
    guard let ring = sharedRing() else { return }
    let path = try scratch.makeFile("disk", size: 1 << 20)
    let node = try await openFileNode(path, aio: "io_uring")
    let waitsBefore = ring.ring.slotWaits
    let count = ring.ring.capacity + 64
    let writes = (0..<count).map { index in
      Task { @BlockActor in
        try await node.write(
          at: Int64(index % 256) * 4096, bytes: pattern(4096, seed: UInt8(index % 256)))
      }
    }
    for write in writes { try await write.value }
    #expect(ring.ring.slotWaits > waitsBefore)
    for index in 0..<256 {
      #expect(
        try await node.read(at: Int64(index) * 4096, count: 4096)
          == pattern(4096, seed: UInt8(index)))
    }
    await node.close()
  }

  @Test(
    "short transfers continue, EAGAIN and ECANCELED are resubmitted (injected through the seam)",
    arguments: [
      [Int32(512)], [-EAGAIN], [-ECANCELED], [-ECANCELED, -ECANCELED], [Int32(100), -EAGAIN],
    ])
  func injectedResults(results: [Int32]) async throws {
    guard sharedRing() != nil else { return }
    let path = try scratch.makeFile("disk", size: 16384)
    let node = try await openFileNode(path, aio: "io_uring")
    let driver = node.fileDriver
    // A write whose first completion(s) are replaced: the driver must still
    // write all of it.
    driver.injectedRingResults = results
    let data = IOVector(copying: pattern(4096, seed: 9))
    try await node.driver.write(node, offset: 4096, length: 4096, from: data, flags: [])
    #expect(driver.injectedRingResults.isEmpty)
    #expect(Array(try contents(of: path)[4096..<8192]) == pattern(4096, seed: 9))
    // The same for a read.
    driver.injectedRingResults = results
    let iov = IOVector(allocating: 4096)
    try await node.driver.read(node, offset: 4096, length: 4096, into: iov, flags: [])
    #expect(driver.injectedRingResults.isEmpty)
    #expect(iov.toArray() == pattern(4096, seed: 9))
    await node.close()
  }
}
