import BlockTestSupport
import Foundation
import Testing

@testable import SpindleCLI

/// `qemu-img info` against Spindle's: human and JSON output, backing chains,
/// errors and exit statuses.
@Suite struct DifferentialInfoTests {
  /// Images of every kind `info` reports differently.
  static func setup(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    try await qemuImg(["create", "-q", "-f", "raw", path("base.raw"), "2M"])
    let written = try await runProcess(
      "qemu-io", ["-f", "raw", "-c", "write -P 1 0 64k", path("base.raw")])
    #expect(written.status == 0)
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", path("mid.qcow2"),
    ])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", path("top.qcow2"), "3M",
    ])
    try await qemuImg(["create", "-q", "-f", "qcow2", "-o", "compat=0.10", path("v2.qcow2"), "1G"])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-u", "-b", "nonexistent", "-F", "raw",
      path("dangling.qcow2"), "1M",
    ])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-u", "-b", "loop2.qcow2", "-F", "qcow2",
      path("loop1.qcow2"), "1M",
    ])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-u", "-b", "loop1.qcow2", "-F", "qcow2",
      path("loop2.qcow2"), "1M",
    ])
    try FileManager.default.createDirectory(
      atPath: path("sub"), withIntermediateDirectories: false)
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-b", "../mid.qcow2", "-F", "qcow2", path("sub/o.qcow2"),
    ])
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k,lazy_refcounts=on,refcount_bits=64",
      path("odd.qcow2"), "1000",
    ])
    // A copy of top.qcow2 marked dirty and corrupt (incompatible bits 0, 1).
    var header = try Data(contentsOf: URL(fileURLWithPath: path("top.qcow2")))
    header[79] |= 3
    try header.write(to: URL(fileURLWithPath: path("dirty.qcow2")))
    try Data("hi\n".utf8).write(to: URL(fileURLWithPath: path("small")))
  }

  static let runs: [[String]] = [
    ["DIR/base.raw"], ["--output=json", "DIR/base.raw"],
    ["DIR/top.qcow2"], ["--output", "json", "DIR/top.qcow2"],
    ["--backing-chain", "DIR/top.qcow2"], ["--output=json", "--backing-chain", "DIR/top.qcow2"],
    ["--backing-chain", "DIR/sub/o.qcow2"],
    ["--output=json", "--backing-chain", "DIR/sub/o.qcow2"],
    ["DIR/v2.qcow2"], ["--output=json", "DIR/v2.qcow2"],
    ["DIR/dangling.qcow2"], ["--backing-chain", "DIR/dangling.qcow2"],
    ["--backing-chain", "DIR/loop1.qcow2"],
    ["DIR/odd.qcow2"], ["-U", "-f", "qcow2", "--output=json", "DIR/odd.qcow2"],
    ["-f", "raw", "DIR/odd.qcow2"], ["-f", "qcow2", "DIR/base.raw"],
    ["DIR/dirty.qcow2"], ["--output=json", "DIR/dirty.qcow2"],
    ["DIR/small"], ["--format=raw", "DIR/small"],
    ["DIR/nonexistent"], ["--output=xml", "DIR/base.raw"], [], ["DIR/a", "DIR/b"],
    ["--output"], ["-Z", "DIR/base.raw"],
  ]

  @Test(
    .requires("qemu-img", "qemu-io"), arguments: runs)
  func infoMatches(_ arguments: [String]) async throws {
    let run = try await runImageCommand(["info"] + arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
  }

  @Test func sizeText() {
    #expect(qemuSizeText(0) == "0 B")
    #expect(qemuSizeText(1000) == "0.977 KiB")
    #expect(qemuSizeText(1024) == "1 KiB")
    #expect(qemuSizeText(1536 << 10) == "1.5 MiB")
    #expect(qemuSizeText(200_704) == "196 KiB")
    #expect(qemuSizeText(UInt64(Int64.max)) == "8 EiB")
  }

  @Test func jsonEscaping() {
    let object = QObject.dict([
      ("a", .string("q\"b\\s/\n\u{1}é")), ("b", .list([.int(-1), .bool(true)])), ("c", .dict([])),
    ])
    #expect(
      object.prettyJSON() == """
        {
            "a": "q\\"b\\\\s/\\n\\u0001\\u00E9",
            "b": [
                -1,
                true
            ],
            "c": {
            }
        }
        """)
  }
}
