import Foundation

/// A random qemu-io script over a random qcow2 configuration, generated from
/// a seed (the same seed always gives the same script): the input of the
/// differential fuzzer (``DifferentialFuzzTests``).
struct DifferentialFuzzScript: Sendable, CustomStringConvertible {
  /// The seed it was generated from.
  var seed: UInt64
  /// `qemu-img create -o` options of the top image.
  var createOptions: String
  /// The top image's size in bytes.
  var size: Int64
  /// Whether the top image has a backing chain (qcow2 over raw).
  var backingChain: Bool
  /// The commands.
  var commands: [String]
  /// Whether asynchronous requests run concurrently (their completions may
  /// print in either order, and clusters may be allocated in either order).
  var hasConcurrentRequests: Bool
  /// Whether the script writes compressed clusters (QEMU reuses the rest of
  /// a freed compressed cluster for the next one; Spindle does not: see
  /// ``DifferentialFuzzRegressionTests``).
  var hasCompressedWrites: Bool
  /// Whether where clusters land in the file may differ from QEMU's for a
  /// known reason (concurrent requests, compressed writes).
  var placementMayDiffer: Bool { hasConcurrentRequests || hasCompressedWrites }

  var description: String {
    "seed \(seed): -o \(createOptions), \(size) bytes\(backingChain ? ", backing chain" : "")\n"
      + commands.map { "  \($0)" }.joined(separator: "\n")
  }

  /// The script for `seed`.
  init(seed: UInt64) {
    self.seed = seed
    var random = KillTestRandom(state: seed &* 0x2545_F491_4F6C_DD1D)
    let cluster = [512, 4096, 4096, 16384, 65536, 65536].randomElement(using: &random)!
    var options = ["cluster_size=\(cluster)"]
    let version3 = Int.random(in: 0..<4, using: &random) != 0
    options.append(version3 ? "compat=1.1" : "compat=0.10")
    if version3 {
      options.append("refcount_bits=\([1, 2, 8, 16, 16, 64].randomElement(using: &random)!)")
      if cluster >= 16384 && Bool.random(using: &random) { options.append("extended_l2=on") }
    }
    createOptions = options.joined(separator: ",")
    size = Int64([1, 2, 3].randomElement(using: &random)!) << 20
    backingChain = Int.random(in: 0..<3, using: &random) == 0
    var generator = CommandGenerator(cluster: Int64(cluster), size: size)
    let count = Int.random(in: 8...28, using: &random)
    while generator.commands.count < count { generator.add(using: &random) }
    generator.commands.append("map")
    commands = generator.commands
    hasConcurrentRequests = generator.hasConcurrentRequests
    hasCompressedWrites = commands.contains { $0.hasPrefix("write -c") }
  }

  /// Builds the command list, keeping track of the disk's size.
  private struct CommandGenerator {
    let cluster: Int64
    var size: Int64
    var commands: [String] = []
    var hasConcurrentRequests = false
    var pattern = 0

    init(cluster: Int64, size: Int64) {
      self.cluster = cluster
      self.size = size
    }

    mutating func nextPattern() -> Int {
      pattern = pattern % 250 + 1
      return pattern
    }

    /// An offset and a length within the disk: cluster-aligned or not,
    /// short or spanning clusters; now and then past the end.
    func range(using random: inout KillTestRandom) -> (Int64, Int64) {
      let aligned = Bool.random(using: &random)
      var length =
        aligned
        ? cluster * Int64.random(in: 1...4, using: &random)
        : Int64.random(in: 1...(3 * cluster), using: &random)
      length = min(length, size)
      var offset = Int64.random(in: 0...(size - length), using: &random)
      if aligned { offset -= offset % cluster }
      if Int.random(in: 0..<40, using: &random) == 0 { offset = size - length / 2 }
      return (offset, length)
    }

    mutating func add(using random: inout KillTestRandom) {
      let roll = Int.random(in: 0..<100, using: &random)
      let (offset, length) = range(using: &random)
      switch roll {
      case 0..<25:
        commands.append("write -P \(nextPattern()) \(offset) \(length)")
      case 25..<30:
        let first = max(1, length / 2)
        commands.append("writev -P \(nextPattern()) \(offset) \(first) \(max(1, length - first))")
      case 30..<38:
        commands.append("write -z \(Bool.random(using: &random) ? "-u " : "")\(offset) \(length)")
      case 38..<45:
        commands.append("discard \(offset) \(length)")
      case 45..<51:
        // Compressed writes: whole clusters (QEMU refuses the others the
        // same way, sometimes tried).
        let start = Bool.random(using: &random) ? offset - offset % cluster : offset
        // Several clusters at once only where QEMU refuses the request
        // before writing anything (a length that is not a whole number of
        // clusters): a failing multi-cluster compressed write is a known
        // divergence (see DifferentialFuzzRegressionTests).
        let count =
          Int.random(in: 0..<5, using: &random) == 0 && length % cluster != 0 ? length : cluster
        commands.append("write -c -P \(nextPattern()) \(start) \(count)")
      case 51..<63:
        commands.append("read -v \(offset) \(min(length, 48))")
      case 63..<70:
        commands.append("read \(offset) \(length)")
      case 70..<75:
        commands.append("read -P 0 \(offset) \(length)")
      case 75..<80:
        commands.append(Bool.random(using: &random) ? "flush" : "aio_flush")
      case 80..<86:
        // A group of concurrent writes on distinct clusters, then a wait.
        hasConcurrentRequests = true
        let requests = Int.random(in: 2...4, using: &random)
        let clusters = max(1, size / cluster)
        var used = Set<Int64>()
        for _ in 0..<requests {
          let index = Int64.random(in: 0..<clusters, using: &random)
          guard used.insert(index).inserted else { continue }
          let start = index * cluster + Int64.random(in: 0..<cluster, using: &random) / 2
          let count = min(
            Int64.random(in: 1...cluster, using: &random), (index + 1) * cluster - start)
          commands.append("aio_write -P \(nextPattern()) \(start) \(count)")
        }
        commands.append("aio_flush")
      case 86..<90:
        let newSize = Int64.random(in: 1...(4 * size), using: &random) & ~511
        let target = max(512, min(newSize, 4 << 20))
        commands.append("truncate \(target)")
        size = target
      case 90..<94:
        commands.append("alloc \(offset) \(length)")
      case 94..<97:
        commands.append("map")
      default:
        commands.append(Bool.random(using: &random) ? "length" : "info")
      }
    }
  }
}
