import BlockCore
import Testing

@testable import BlockDrivers

/// Pure-Swift pieces of the qcow2 driver: refcount packing, the L2 cache,
/// header rewriting and L2 entry decoding.
@Suite("qcow2 units")
struct Qcow2UnitTests {
  @Test(
    "refcount entries of every width pack as the spec says", arguments: [1, 2, 4, 8, 16, 32, 64])
  func refcountWidths(bits: Int) {
    var block = Qcow2RefcountBlock(clusterSize: 512, bits: bits)
    #expect(block.count == 512 * 8 / bits)
    block[0] = 1
    block[3] = block.maxValue
    block[block.count - 1] = 1
    #expect(block[0] == 1 && block[1] == 0 && block[3] == block.maxValue)
    #expect(block[block.count - 1] == 1)
    if bits < 8 {
      // Narrow entries fill bytes from the least significant bit.
      #expect(block.bytes[0] & 1 == 1)
      #expect(block.bytes[511] >> (8 - bits) == 1)
    } else {
      // Wide entries are big-endian.
      #expect(block.bytes[bits / 8 - 1] == 1)
      #expect(block.bytes[511] == 1)
      #expect(Array(block.bytes[3 * bits / 8..<4 * bits / 8]).allSatisfy { $0 == 0xFF })
    }
    block[3] = 0
    #expect(block[3] == 0 && block[0] == 1)
  }

  @Test("the L2 cache evicts the least recently used table")
  func l2Cache() {
    var cache = Qcow2L2Cache(capacity: 2)
    cache.insert(Qcow2L2Table(words: [1]), at: 100)
    cache.insert(Qcow2L2Table(words: [2]), at: 200)
    #expect(cache.table(at: 100)?.words == [1])
    cache.insert(Qcow2L2Table(words: [3]), at: 300)
    #expect(cache.table(at: 200) == nil)
    #expect(cache.table(at: 100)?.words == [1] && cache.table(at: 300)?.words == [3])
    cache.remove(at: 100)
    #expect(cache.table(at: 100) == nil && cache.count == 1)
  }

  @Test("a dirty L2 table is neither evicted nor cleaned away until it is marked clean")
  func l2CacheDirty() {
    var cache = Qcow2L2Cache(capacity: 2)
    cache.insert(Qcow2L2Table(words: [1]), at: 100)
    cache.insert(Qcow2L2Table(words: [2]), at: 200)
    cache.markDirty(100)
    cache.markDirty(300)  // not cached: nothing to write back
    #expect(cache.dirtyOffsets == [100])
    // 100 is the least recently used, but dirty: 200 goes instead.
    cache.insert(Qcow2L2Table(words: [3]), at: 300)
    #expect(cache.table(at: 200) == nil && cache.table(at: 100)?.words == [1])
    cache.dropUnused(since: cache.useClock)
    #expect(cache.table(at: 100)?.words == [1] && cache.table(at: 300) == nil)
    cache.markClean(100)
    cache.dropUnused(since: cache.useClock)
    #expect(cache.count == 0)
    cache.insert(Qcow2L2Table(words: [4]), at: 400)
    cache.markDirty(400)
    cache.remove(at: 400)  // freed: its changes are dropped
    #expect(cache.dirtyOffsets.isEmpty)
  }

  @Test("a cached L2 table changes in place: the cache and its readers share it")
  func l2TableInPlace() {
    var cache = Qcow2L2Cache(capacity: 2)
    let table = Qcow2L2Table(zeroedWords: 4)
    cache.insert(table, at: 100)
    table[2] = 7
    #expect(cache.table(at: 100)?.words == [0, 0, 7, 0])
    #expect(cache.table(at: 100) === table)
  }

  @Test("a refcount block change that did not reach the file can be undone")
  func refcountRestore() {
    var block = Qcow2RefcountBlock(clusterSize: 512, bits: 4)
    block[1] = 3
    let saved = Array(block.bytes[0..<2])
    block[0] = 5
    block[2] = 9
    block.restore(saved, at: 0)
    #expect(block[0] == 0 && block[1] == 3 && block[2] == 0)
  }

  @Test("the overlap check looks at table entries up to the last one in use")
  func usedEntries() {
    #expect([UInt64]().usedEntryCount == 0)
    #expect([0, 0].usedEntryCount == 0)
    #expect([0x30000, 0, 0x50000, 0, 0].usedEntryCount == 3)
  }

  @Test("the refcount table's used part follows every change of the table")
  @BlockActor
  func usedRefcountTable() throws {
    let options = Qcow2CreateOptions(size: 1 << 20)
    let image = try Qcow2Create.layout(options)
    let header = try Qcow2Header.parse(image, fileLength: Int64(image.count))
    let refcounts = Qcow2Refcounts(header: header, table: [0x20000, 0, 0, 0])
    #expect(refcounts.usedTableEntries == 1)
    refcounts.table[3] = 0x90000
    #expect(refcounts.usedTableEntries == 4)
    refcounts.table[3] = 0
    #expect(refcounts.usedTableEntries == 1)
  }

  @Test("rewriting a header keeps unknown extensions and clears unknown autoclear bits")
  func rewrite() throws {
    var options = Qcow2CreateOptions(size: 1 << 20)
    options.backingFile = "base.qcow2"
    options.backingFormat = "qcow2"
    let image = try Qcow2Create.layout(options)
    var header = try Qcow2Header.parse(image, fileLength: Int64(image.count))
    let unknown = Qcow2HeaderExtension(type: 0x1234_5678, data: [1, 2, 3, 4, 5])
    header.extensions.insert(unknown, at: 0)
    header.autoclearFeatures = 1 << 7 | Qcow2Feature.bitmaps
    let bytes = try header.encode()
    let reread = try Qcow2Header.parse(bytes, fileLength: Int64(image.count))
    #expect(
      reread.extensions.map(\.type) == [
        Qcow2HeaderExtension.backingFormat, Qcow2HeaderExtension.featureNameTable, 0x1234_5678,
      ])
    #expect(reread.extensions.last == unknown)
    #expect(reread.autoclearFeatures == Qcow2Feature.bitmaps)
    #expect(reread.backingFile == "base.qcow2" && reread.backingFormat == "qcow2")
    #expect(reread.backingFileOffset == header.backingFileOffset)
    #expect(reread.backingFileOffset == 112 + 16 + 8 + 384 + 16 + 8)
  }

  @Test("a header whose extensions overflow the cluster cannot be written")
  func rewriteOverflow() throws {
    var header = Qcow2Header()
    header.clusterBits = 9
    header.extensions = [Qcow2HeaderExtension(type: 7, data: [UInt8](repeating: 1, count: 400))]
    #expect(throws: BlockError.self) { try header.encode() }
  }

  @Test("L2 entries decode to cluster types and compressed descriptors")
  func entries() {
    #expect(Qcow2Entry.type(of: 0) == .unallocated)
    #expect(Qcow2Entry.type(of: 1) == .zeroPlain)
    #expect(Qcow2Entry.type(of: 0x50000 | 1) == .zeroAllocated)
    #expect(Qcow2Entry.type(of: 1 << 63 | 0x50000) == .normal)
    // 64 KiB clusters: the sector count sits at bit 54; 3 extra sectors.
    let entry: UInt64 = 1 << 62 | 3 << 54 | 0x50100
    #expect(Qcow2Entry.type(of: entry) == .compressed)
    let descriptor = Qcow2CompressedDescriptor(entry: entry, clusterBits: 16)
    #expect(descriptor.offset == 0x50100)
    #expect(descriptor.length == 4 * 512 - 0x100)
  }
}
