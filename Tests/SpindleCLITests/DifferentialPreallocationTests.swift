import BlockTestSupport
import Foundation
import Testing

/// `qemu-img create -o preallocation=...` and `qemu-img resize
/// --preallocation=...` against Spindle's, on qcow2 and raw: output, errors,
/// exit statuses, the files byte for byte, `qemu-img map` of the qcow2
/// images, and `qemu-img check` clean on Spindle's.
@Suite(.requires("qemu-img", "qemu-io"))
struct DifferentialPreallocationTests {
  /// A qcow2 image of an unaligned size whose partly used last cluster
  /// holds data, and a raw image.
  static func setup(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    try await qemuImg(["create", "-q", "-f", "qcow2", path("q.qcow2"), "1000000"])
    let result = try await runProcess(
      "qemu-io", ["-c", "write -P 1 0 900k", "-c", "write -P 2 990000 10000", path("q.qcow2")])
    #expect(result.status == 0, "\(result)")
    try await qemuImg(["create", "-q", "-f", "raw", path("r.raw"), "1M"])
  }

  static let creates: [[String]] = [
    ["-f", "qcow2", "-o", "preallocation=metadata", "DIR/n.qcow2", "1000000"],
    ["-f", "qcow2", "-o", "preallocation=metadata", "DIR/n.qcow2", "10M"],
    ["-f", "qcow2", "-o", "preallocation=metadata,cluster_size=4k", "DIR/n.qcow2", "3000000"],
    ["-f", "qcow2", "-o", "preallocation=metadata,cluster_size=512", "DIR/n.qcow2", "1M"],
    ["-f", "qcow2", "-o", "preallocation=falloc", "DIR/n.qcow2", "1000000"],
    ["-f", "qcow2", "-o", "preallocation=full", "DIR/n.qcow2", "10M"],
    [
      "-f", "qcow2", "-o", "preallocation=full,cluster_size=4k,refcount_bits=1", "DIR/n.qcow2",
      "5M",
    ],
    ["-f", "qcow2", "-o", "preallocation=falloc,compat=0.10", "DIR/n.qcow2", "3M"],
    ["-f", "qcow2", "-o", "preallocation=off", "DIR/n.qcow2", "1M"],
    ["-f", "qcow2", "-o", "preallocation=bogus", "DIR/n.qcow2", "1M"],
    ["-f", "qcow2", "-o", "preallocation=full", "-b", "DIR/q.qcow2", "-F", "qcow2", "DIR/n.qcow2"],
    ["-f", "raw", "-o", "preallocation=falloc", "DIR/n.raw", "1M"],
    ["-f", "raw", "-o", "preallocation=full", "DIR/n.raw", "1000000"],
    ["-f", "raw", "-o", "preallocation=metadata", "DIR/n.raw", "1M"],
  ]

  static let resizes: [[String]] = [
    ["--preallocation=metadata", "DIR/q.qcow2", "+5M"],
    ["--preallocation=metadata", "DIR/q.qcow2", "2096640"],
    ["--preallocation=falloc", "DIR/q.qcow2", "+5M"],
    ["--preallocation=full", "DIR/q.qcow2", "2096640"],
    ["--preallocation=full", "DIR/q.qcow2", "1000000"],
    ["--preallocation=full", "--shrink", "DIR/q.qcow2", "500000"],
    ["-f", "raw", "--preallocation=metadata", "DIR/r.raw", "3M"],
    ["-f", "raw", "--preallocation=falloc", "DIR/r.raw", "3M"],
    ["-f", "raw", "--preallocation=full", "DIR/r.raw", "+1M"],
    ["--shrink", "DIR/q.qcow2", "500k"],
    ["--shrink", "DIR/q.qcow2", "64k"],
  ]

  @Test("create with preallocation", arguments: creates)
  func createMatches(_ arguments: [String]) async throws {
    try await expectSame(try await runImageCommand(["create"] + arguments, setup: Self.setup))
  }

  @Test("resize with preallocation or --shrink", arguments: resizes)
  func resizeMatches(_ arguments: [String]) async throws {
    try await expectSame(try await runImageCommand(["resize"] + arguments, setup: Self.setup))
  }

  private func expectSame(_ run: ImageCommandRun) async throws {
    #expect(run.spindle == run.qemu, "\(run)")
    #expect(try run.fileNames() == run.spindleFileNames())
    for name in try run.fileNames() {
      #expect(run.sameBytes(name), "\(name) differs")
      guard name.hasSuffix(".qcow2") else { continue }
      let maps = try await [run.qemuDirectory, run.spindleDirectory].asyncMap {
        try await runProcess("qemu-img", ["map", "--output=json", "\($0)/\(name)"]).output
      }
      #expect(maps[0] == maps[1], "\(name): maps differ")
      let check = try await run.checkSpindleImage(name)
      #expect(check.status == 0, "\(name): \(check)")
    }
  }
}

extension Array {
  /// The results of `transform` over the elements, in order.
  fileprivate func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
    var results: [T] = []
    for element in self { results.append(try await transform(element)) }
    return results
  }
}
