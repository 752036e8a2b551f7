import BlockCore
import BlockTestSupport
import Testing

/// A deterministic pseudo-random generator (SplitMix64) so failures reproduce.
struct SplitMix64: RandomNumberGenerator {
  var state: UInt64
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}

/// Many concurrent unaligned writes (each a serialising read-modify-write) and
/// reads on one node; every driver call yields so requests interleave.
@Suite("Concurrent read-modify-write stress")
@BlockActor
struct StressTests {
  /// What the concurrent tasks observed, in the order they observed it.
  @BlockActor final class Log {
    var completionOrder: [UInt8] = []
    var readResults: [(Int64, [UInt8])] = []
  }

  struct WriteOp {
    let id: UInt8
    let offset: Int64
    let count: Int
  }

  @Test(
    "final content is a serial order of the writes; reads never see half a write",
    arguments: [1, 2, 3, 4, 5] as [UInt64])
  func stress(seed: UInt64) async throws {
    var random = SplitMix64(state: seed)
    let size: Int64 = 64 * 1024
    var limits = BlockLimits()
    limits.requestAlignment = 512
    let (node, driver) = try await makeRecordingNode(size: size, limits: limits)
    driver.interceptor = { _ in await Task.yield() }

    let writes: [WriteOp] = (1...120).map { id in
      let count = Int.random(in: 1...3000, using: &random)
      let offset = Int64.random(in: 0...(size - Int64(count)), using: &random)
      return WriteOp(id: UInt8(id), offset: offset, count: count)
    }
    let reads: [(Int64, Int)] = (0..<60).map { _ in
      let count = Int.random(in: 1...4000, using: &random)
      return (Int64.random(in: 0...(size - Int64(count)), using: &random), count)
    }

    let log = Log()
    var tasks: [Task<Void, Error>] = []
    var writeIndex = 0
    var readIndex = 0
    while writeIndex < writes.count || readIndex < reads.count {
      if writeIndex < writes.count && (readIndex >= reads.count || random.next() % 3 != 0) {
        let op = writes[writeIndex]
        writeIndex += 1
        tasks.append(
          Task {
            try await node.write(at: op.offset, bytes: [UInt8](repeating: op.id, count: op.count))
            log.completionOrder.append(op.id)
          })
      } else {
        let (offset, count) = reads[readIndex]
        readIndex += 1
        tasks.append(
          Task {
            let data = try await node.read(at: offset, count: count)
            log.readResults.append((offset, data))
          })
      }
    }
    for task in tasks { try await task.value }
    let completionOrder = log.completionOrder
    #expect(completionOrder.count == writes.count)

    // The final content equals the writes applied in completion order.
    var model = [UInt8](repeating: 0, count: Int(size))
    let byID = Dictionary(uniqueKeysWithValues: writes.map { ($0.id, $0) })
    for id in completionOrder {
      let op = byID[id]!
      for index in Int(op.offset)..<Int(op.offset) + op.count { model[index] = id }
    }
    #expect(try await node.read(at: 0, count: Int(size)) == model)

    // A read that shows any byte of a write shows no byte that write overwrote.
    var rank: [UInt8: Int] = [0: -1]
    for (position, id) in completionOrder.enumerated() { rank[id] = position }
    var torn = 0
    for (offset, data) in log.readResults {
      let readRange = offset..<offset + Int64(data.count)
      for op in writes {
        let start = max(readRange.lowerBound, op.offset)
        let end = min(readRange.upperBound, op.offset + Int64(op.count))
        guard start < end else { continue }
        let slice = data[Int(start - offset)..<Int(end - offset)]
        guard slice.contains(op.id) else { continue }
        if slice.contains(where: { rank[$0]! < rank[op.id]! }) { torn += 1 }
      }
    }
    #expect(torn == 0)
  }
}
