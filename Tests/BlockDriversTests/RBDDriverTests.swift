import BlockCore
import BlockDrivers
import BlockTestSupport
import Foundation
import Testing

/// The rbd driver in this process, on the shared test cluster: what the
/// command-line comparisons with QEMU cannot reach.
@Suite(.requiresCeph())
struct RBDDriverTests {
  /// Writes past the end from many requests at once (as a format growing
  /// its file does): each grows the image first, and a smaller growth
  /// started later never shrinks it below a larger one, so every write is
  /// there and the image ends at the furthest write. (Growing without
  /// serialisation fails here: a write finds the image shrunk under it.)
  @Test @BlockActor func concurrentWritesPastTheEndAllLand() async throws {
    let name = "sp-\(UUID().uuidString.prefix(8).lowercased())-grow"
    let result: (length: Int64, missing: [Int64])
    do {
      result = try await Self.writePastTheEnd("rbd:\(CephRequirement.pool)/\(name)")
    } catch {
      await Self.remove(name)
      throw error
    }
    await Self.remove(name)
    #expect(result.length == 16 << 20)
    #expect(result.missing.isEmpty, "writes lost at \(result.missing)")
  }

  /// Creates a 1 MiB image, writes 4 KiB ending at each MiB up to 16 MiB
  /// at once (largest first), and returns the image's length and the ends
  /// whose data is not there.
  @BlockActor
  static func writePastTheEnd(_ filename: String) async throws -> (Int64, [Int64]) {
    try await RBDCreate.create(filename: filename, size: 1 << 20, clusterSize: nil)
    var options = DriverOptions()
    options["driver"] = "rbd"
    options["filename"] = filename
    let node = try await ImageOpener.open(filename: nil, options: options)
    let ends = (1...16).map { Int64($0) << 20 }
    let writes = ends.reversed().map { end in
      Task { @BlockActor in
        try await node.write(
          at: end - 4096, bytes: [UInt8](repeating: UInt8(end >> 20), count: 4096))
      }
    }
    do {
      for write in writes { try await write.value }
      let length = try await node.driver.length(node)
      var missing: [Int64] = []
      for end in ends {
        let bytes = try await node.read(at: end - 4096, count: 4096)
        if bytes != [UInt8](repeating: UInt8(end >> 20), count: 4096) { missing.append(end) }
      }
      await node.close()
      return (length, missing)
    } catch {
      for write in writes { _ = await write.result }
      await node.close()
      throw error
    }
  }

  /// Removes the image `name` from the test pool.
  static func remove(_ name: String) async {
    _ = try? await ChildProcess.run(
      "/usr/bin/env", ["rbd", "rm", "--no-progress", "\(CephRequirement.pool)/\(name)"])
  }
}
