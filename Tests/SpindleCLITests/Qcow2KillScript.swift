import Foundation

/// A deterministic pseudo-random generator (SplitMix64): a failing seed
/// reproduces.
struct KillTestRandom: RandomNumberGenerator {
  var state: UInt64
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}

/// A long qemu-io script of allocating writes (plain and compressed),
/// zero-writes, discards and flushes over a disk cut into slots, and what
/// each slot must hold once a flush after its last command has completed.
///
/// Every flush is followed by `length`, whose output line marks that the
/// flush (and every command before it) completed. Each slot is written once,
/// then possibly zeroed or discarded as a whole, so the expected contents of
/// a slot depend only on its own commands.
struct KillScript {
  /// What a slot holds after one of its commands.
  enum SlotState: Equatable {
    /// `length` bytes of `pattern` at `offset`, zeroes around them.
    case pattern(UInt8, offset: Int64, length: Int64)
    /// Zeroes over the whole slot.
    case zero
  }

  /// Bytes per slot: a multiple of every cluster size the test uses.
  static let slotSize: Int64 = 256 << 10
  /// The qemu-io commands, in order.
  private(set) var commands: [String] = []
  /// For each slot touched: (index of the command, state after it).
  private(set) var history: [Int: [(command: Int, state: SlotState)]] = [:]
  /// Command indexes of the flushes, in order.
  private(set) var flushes: [Int] = []

  /// A random script of `count` commands for a disk of `diskSize` bytes with
  /// `clusterSize` clusters.
  init(count: Int, diskSize: Int64, clusterSize: Int64, random: inout KillTestRandom) {
    let slots = Int(diskSize / Self.slotSize)
    var fresh = Array(0..<slots).shuffled(using: &random)
    var written: [Int] = []
    var pattern: UInt8 = 0
    func nextPattern() -> UInt8 {
      pattern = pattern == 255 ? 1 : pattern + 1
      return pattern
    }
    while commands.count < count {
      let roll = Int.random(in: 0..<100, using: &random)
      let base = { (slot: Int) in Int64(slot) * Self.slotSize }
      if roll < 10 {
        flushes.append(commands.count)
        commands += ["flush", "length"]
      } else if roll < 25, let slot = written.randomElement(using: &random) {
        let unmap = Bool.random(using: &random)
        let command =
          roll < 18
          ? "write -z \(unmap ? "-u " : "")\(base(slot)) \(Self.slotSize)"
          : "discard \(base(slot)) \(Self.slotSize)"
        record(slot, command, .zero)
      } else if let slot = fresh.popLast() {
        written.append(slot)
        let byte = nextPattern()
        if roll < 35 {
          let clusters = Int64.random(
            in: 1...max(1, min(4, Self.slotSize / clusterSize)), using: &random)
          record(
            slot, "write -c -P \(byte) \(base(slot)) \(clusters * clusterSize)",
            .pattern(byte, offset: base(slot), length: clusters * clusterSize))
        } else {
          let start = base(slot) + Int64.random(in: 0..<(64 << 10), using: &random)
          let length = Int64.random(in: 1...(Self.slotSize - (64 << 10)), using: &random)
          record(
            slot, "write -P \(byte) \(start) \(length)",
            .pattern(byte, offset: start, length: length))
        }
      } else {
        break
      }
    }
  }

  private mutating func record(_ slot: Int, _ command: String, _ state: SlotState) {
    history[slot, default: []].append((commands.count, state))
    commands.append(command)
  }

  /// qemu-io `read -P` commands checking every slot whose commands all come
  /// before command `durable` (the last flush known to have completed).
  func verification(durableBefore durable: Int) -> [String] {
    var reads: [String] = []
    for (slot, events) in history.sorted(by: { $0.key < $1.key }) {
      guard let last = events.last, events.allSatisfy({ $0.command < durable }) else { continue }
      let base = Int64(slot) * Self.slotSize
      switch last.state {
      case .zero:
        reads.append("read -P 0 \(base) \(Self.slotSize)")
      case .pattern(let byte, let offset, let length):
        reads.append("read -P \(byte) \(offset) \(length)")
        if offset > base { reads.append("read -P 0 \(base) \(offset - base)") }
        let end = offset + length
        if end < base + Self.slotSize {
          reads.append("read -P 0 \(end) \(base + Self.slotSize - end)")
        }
      }
    }
    return reads
  }
}
