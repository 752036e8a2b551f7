import BlockCore

@testable import BlockDrivers

/// A fast in-process form of the corruption half of `qemu-img check` for
/// crash tests: counts the references to every host cluster (header,
/// refcount table and blocks, L1 table, L2 tables, data and compressed
/// clusters) and reports the clusters whose stored refcount is lower than
/// their references, or that lie past the end of the file. Leaks (refcounts
/// above the references) are allowed, as after a crash. Images without
/// internal snapshots only.
struct Qcow2ReferenceCheck {
  /// Descriptions of the corruptions found (empty: none).
  private(set) var corruptions: [String] = []

  /// Checks the image `bytes`.
  init(_ bytes: [UInt8]) {
    let header: Qcow2Header
    do {
      header = try Qcow2Header.parse(bytes, fileLength: Int64(bytes.count))
    } catch {
      corruptions = ["header: \(error)"]
      return
    }
    let clusterBits = Int64(header.clusterBits)
    let clusterSize = header.clusterSize
    let fileClusters = (Int64(bytes.count) + clusterSize - 1) >> clusterBits
    // References per host cluster, indexed by cluster (arrays, not
    // dictionaries: the crash tests run this thousands of times).
    var references = [Int32](repeating: 0, count: Int(fileClusters))
    func reference(_ offset: Int64, _ length: Int64, _ what: String) {
      guard length > 0 else { return }
      let first = offset >> clusterBits
      let last = (offset + length - 1) >> clusterBits
      for cluster in first...last {
        if cluster >= fileClusters {
          corruptions.append(
            "\(what) at 0x\(String(offset, radix: 16)) lies past the end of the file")
          return
        }
        references[Int(cluster)] += 1
      }
    }
    func uint64(_ offset: Int64) -> UInt64 {
      offset + 8 <= bytes.count ? bytes.uint64(at: Int(offset)) : 0
    }
    reference(0, clusterSize, "header")
    let tableOffset = Int64(header.refcountTableOffset)
    let tableBytes = Int64(header.refcountTableClusters) * clusterSize
    reference(tableOffset, tableBytes, "refcount table")
    var blocks: [Int64] = []
    for index in 0..<tableBytes / 8 {
      let block = Int64(uint64(tableOffset + index * 8) & Qcow2Entry.offsetMask)
      blocks.append(block)
      if block != 0 { reference(block, clusterSize, "refcount block \(index)") }
    }
    let l1Offset = Int64(header.l1TableOffset)
    reference(l1Offset, Int64(header.l1Size) * 8, "L1 table")
    for l1Index in 0..<Int64(header.l1Size) {
      let l2 = Int64(uint64(l1Offset + l1Index * 8) & Qcow2Entry.offsetMask)
      guard l2 != 0 else { continue }
      reference(l2, clusterSize, "L2 table \(l1Index)")
      for l2Index in 0..<header.l2Entries {
        let entry = uint64(l2 + l2Index * 8)
        let what = "cluster \(l2Index) of L2 table \(l1Index)"
        switch Qcow2Entry.type(of: entry) {
        case .normal, .zeroAllocated:
          reference(Int64(entry & Qcow2Entry.offsetMask), clusterSize, what)
        case .compressed:
          let descriptor = Qcow2CompressedDescriptor(entry: entry, clusterBits: header.clusterBits)
          reference(descriptor.offset, descriptor.length, what)
        case .zeroPlain, .unallocated, .unallocatedAllocated:
          break
        }
      }
    }
    let bits = header.refcountBits
    let perBlock = Int64(clusterSize) * 8 / Int64(bits)
    for (index, count) in references.enumerated() where count > 0 {
      let cluster = Int64(index)
      let blockIndex = Int(cluster / perBlock)
      var refcount: UInt64 = 0
      if blockIndex < blocks.count, blocks[blockIndex] != 0 {
        let bit = (cluster % perBlock) * Int64(bits)
        let start = blocks[blockIndex] + bit / 8
        for byte in 0..<max(1, bits / 8) where start + Int64(byte) < bytes.count {
          refcount = refcount << 8 | UInt64(bytes[Int(start) + byte])
        }
        if bits < 8 {
          // Sub-byte refcounts are packed least significant bits first.
          refcount = (refcount >> UInt64(bit % 8)) & ((1 << UInt64(bits)) - 1)
        }
      }
      if refcount < UInt64(count) {
        corruptions.append("cluster \(cluster): refcount \(refcount), \(count) references")
      }
    }
  }
}
