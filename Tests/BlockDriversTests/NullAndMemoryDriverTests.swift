import BlockCore
import BlockDrivers
import Testing

@Suite("null-co and memory drivers")
@BlockActor
struct NullAndMemoryDriverTests {
  @Test("null-co: default size 1 GiB; reads leave the buffer alone unless read-zeroes=on")
  func nullDefaults() async throws {
    let node = try await ImageOpener.open(
      filename: nil, options: try DriverOptions.parse("driver=null-co"))
    #expect(node.length == 1 << 30)
    #expect(node.driver.formatName == "null-co")
    let iov = IOVector(allocating: 16)
    iov.fill(0x5A)
    try await node.read(at: 0, into: iov)
    #expect(iov.toArray() == [UInt8](repeating: 0x5A, count: 16))

    let zeroing = try await ImageOpener.open(
      filename: nil, options: try DriverOptions.parse("driver=null-co,size=1M,read-zeroes=on"))
    #expect(zeroing.length == 1 << 20)
    try await zeroing.read(at: 0, into: iov)
    #expect(iov.toArray() == [UInt8](repeating: 0, count: 16))
    let status = try await zeroing.blockStatus(offset: 0, bytes: 4096, wantZero: true)
    #expect(status.flags.contains(.zero) && status.flags.contains(.offsetValid))
  }

  @Test("null-co: latency-ns delays requests without failing them; bad options are refused")
  func nullOptions() async throws {
    let node = try await ImageOpener.open(
      filename: nil, options: try DriverOptions.parse("driver=null-co,size=4k,latency-ns=1000"))
    try await node.write(at: 0, bytes: [1, 2, 3])
    await #expect(throws: BlockError.self) {
      _ = try await ImageOpener.open(
        filename: nil, options: try DriverOptions.parse("driver=null-co,latency-ns=-5"))
    }
    let error = await #expect(throws: BlockError.self) {
      _ = try await ImageOpener.open(
        filename: nil, options: try DriverOptions.parse("driver=null-co,bogus=1"))
    }
    #expect(error?.message == "Block protocol 'null-co' doesn't support the option 'bogus'")
  }

  @Test("memory: data, zero and unallocated ranges; backing reads; discard deallocates")
  func memoryAllocationMap() async throws {
    let base = BlockNode(name: "base", driver: MemoryDriver(size: 65536))
    try await base.open()
    try await base.write(at: 0, bytes: [UInt8](repeating: 0xBB, count: 65536))
    let overlay = BlockNode(
      name: "top", driver: MemoryDriver(size: 65536),
      options: NodeOptions(discard: .unmap))
    overlay.attach(base, role: .backing)
    try await overlay.open()
    try await overlay.write(at: 4096, bytes: [UInt8](repeating: 1, count: 4096))
    try await overlay.writeZeroes(at: 8192, count: 4096)

    #expect(try await overlay.read(at: 4095, count: 2) == [0xBB, 1])
    #expect(try await overlay.read(at: 8192, count: 2) == [0, 0])
    let (depth, count) = try await overlay.isAllocatedAbove(base: nil, offset: 0, bytes: 65536)
    #expect(depth == 2 && count == 4096)
    let (topDepth, topCount) = try await overlay.isAllocatedAbove(
      base: nil, offset: 4096, bytes: 65536)
    #expect(topDepth == 1 && topCount == 4096)  // data, then a zero range: two answers
    let zeroStatus = try await overlay.blockStatus(offset: 8192, bytes: 65536, wantZero: true)
    #expect(zeroStatus.flags == [.zero, .allocated] && zeroStatus.count == 4096)

    try await overlay.discard(at: 4096, count: 4096)
    #expect(try await overlay.read(at: 4096, count: 1) == [0xBB])
  }

  @Test("option strings: escaped commas, implied keys, json: filenames, sizes")
  func optionParsing() throws {
    let options = try DriverOptions.parse("driver=file,filename=a,,b,locking=off")
    #expect(options.values == ["driver": "file", "filename": "a,b", "locking": "off"])
    let implied = try DriverOptions.parse("disk.img,cache=none", impliedKey: "filename")
    #expect(implied.values == ["filename": "disk.img", "cache": "none"])
    let json = try DriverOptions.parseJSON(
      #"{"driver": "raw", "file": {"driver": "file", "filename": "x.img"}, "read-only": true}"#)
    #expect(
      json.values == [
        "driver": "raw", "file.driver": "file", "file.filename": "x.img", "read-only": "on",
      ])
    #expect(throws: BlockError.self) { try DriverOptions.parseJSON("{not json") }
    #expect(parseSize("4k") == 4096)
    #expect(parseSize("1G") == 1 << 30)
    #expect(parseSize("0x200") == 512)
    #expect(parseSize("1.5M") == 3 << 19)
    #expect(parseSize("12Q") == nil)
    #expect(parseSize("16E") == nil)
    #expect(parseSize("-1") == nil)
  }
}
