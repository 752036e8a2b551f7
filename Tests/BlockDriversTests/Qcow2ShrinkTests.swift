import BlockCore
import BlockDrivers
import BlockTestSupport
import Foundation
import Testing

/// Shrinking qcow2 images against `qemu-img resize --shrink` on identical
/// copies: the files must be byte-identical (same discarded clusters, same L1
/// and refcount tables, same file length), `qemu-img check` clean and
/// `qemu-img compare` equal.
@Suite(
  "qcow2 shrink",
  .requires("qemu-img", "qemu-io"))
@BlockActor
struct Qcow2ShrinkTests {
  /// An image to shrink: how it is made and filled, and the new size.
  struct Case: Sendable, CustomTestStringConvertible {
    var name: String
    var create: [String]
    var size: String
    var commands: [String]
    var newSize: Int64
    var testDescription: String { name }
  }

  nonisolated static let cases: [Case] = [
    Case(
      name: "inside an L2 table", create: [], size: "3G",
      commands: ["write 0 64k", "write 1G 128k", "write 2G 64k", "write 1500M 64k"],
      newSize: 1200 << 20),
    Case(
      name: "into an unallocated L1 entry (QEMU allocates its L2 table)", create: [], size: "3G",
      commands: ["write 0 64k", "write 1G 128k", "write 2G 64k"], newSize: 700 << 20),
    Case(
      name: "unaligned new size", create: [], size: "3G",
      commands: ["write -P 3 0 1M", "write 1G 128k"], newSize: 1_000_000_000 - 512),
    Case(
      name: "small clusters: refcount blocks dropped, zero and compressed clusters",
      create: ["-o", "cluster_size=512"], size: "4M",
      commands: [
        "write -P 1 0 1M", "write -z 1M 64k", "write -c 2M 512", "write -P 2 3M 512k",
        "discard 100k 200k",
      ], newSize: 512 << 10),
    Case(
      name: "compat 0.10", create: ["-o", "compat=0.10,cluster_size=4k"], size: "8M",
      commands: ["write 0 6M"], newSize: 1 << 20),
    Case(
      name: "1-bit refcounts", create: ["-o", "refcount_bits=1,cluster_size=1k"], size: "8M",
      commands: ["write 0 3M", "write 7M 1M"], newSize: 2 << 20),
  ]

  @Test("same image as qemu-img resize --shrink", arguments: cases)
  func sameAsQemuImg(_ testCase: Case) async throws {
    let scratch = try ScratchDirectory()
    let qemuPath = scratch.file("q.qcow2")
    try await QcowTools.img(
      ["create", "-q", "-f", "qcow2"] + testCase.create + [qemuPath, testCase.size])
    try await QcowTools.io(qemuPath, testCase.commands)
    let spindlePath = scratch.file("s.qcow2")
    try Data(try contents(of: qemuPath)).write(to: URL(fileURLWithPath: spindlePath))

    try await QcowTools.img(["resize", "-q", "--shrink", qemuPath, String(testCase.newSize)])
    let node = try await openQcow2(spindlePath, readOnly: false)
    try await node.truncate(to: testCase.newSize, exact: false)
    #expect(node.length == testCase.newSize)
    await node.close()

    #expect(try contents(of: qemuPath) == contents(of: spindlePath), "files differ")
    try await QcowTools.img(["check", "-q", spindlePath])
    try await QcowTools.img(["compare", "-q", qemuPath, spindlePath])
    #expect(try await QcowTools.map(qemuPath) == QcowTools.map(spindlePath))
  }

  @Test("shrinking an overlay matches qemu-img")
  func shrinkWithBacking() async throws {
    let scratch = try ScratchDirectory()
    let base = scratch.file("base.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", base, "4M"])
    try await QcowTools.io(base, ["write -P 9 0 4M"])
    let qemuPath = scratch.file("q.qcow2")
    try await QcowTools.img(
      ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", qemuPath, "4M"])
    try await QcowTools.io(qemuPath, ["write -P 1 1M 2M"])
    let spindlePath = scratch.file("s.qcow2")
    try Data(try contents(of: qemuPath)).write(to: URL(fileURLWithPath: spindlePath))
    try await QcowTools.img(["resize", "-q", "--shrink", qemuPath, "2M"])
    let node = try await openQcow2(spindlePath, readOnly: false)
    try await node.truncate(to: 2 << 20, exact: false)
    await node.close()
    #expect(try contents(of: qemuPath) == contents(of: spindlePath), "files differ")
    #expect(try await QcowTools.map(qemuPath) == QcowTools.map(spindlePath))
  }

  @Test("growing back after a shrink reads zeroes where the data was")
  func growAfterShrink() async throws {
    let scratch = try ScratchDirectory()
    let path = scratch.file("disk.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", path, "2M"])
    try await QcowTools.io(path, ["write -P 5 0 2M"])
    let node = try await openQcow2(path, readOnly: false)
    try await node.truncate(to: 1 << 20, exact: false)
    try await node.truncate(to: 2 << 20, exact: false)
    await node.close()
    try await QcowTools.io(path, ["read -P 5 0 1M", "read -P 0 1M 1M"])
    try await QcowTools.img(["check", "-q", path])
  }

  @Test(
    "resizing over an internal snapshot matches qemu-img",
    arguments: [
      (Int64(5) << 20, PreallocationMode.off), (Int64(1) << 20, .off), (Int64(3) << 19, .off),
      (Int64(6) << 20, .metadata), (Int64(6) << 20, .full),
    ])
  func withSnapshot(_ newSize: Int64, _ mode: PreallocationMode) async throws {
    let scratch = try ScratchDirectory()
    let qemuPath = scratch.file("q.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", qemuPath, "4M"])
    try await QcowTools.io(qemuPath, ["write -P 1 0 3M"])
    try await QcowTools.img(["snapshot", "-c", "one", qemuPath])
    try await QcowTools.io(qemuPath, ["write -P 2 1M 1M"])
    let spindlePath = scratch.file("s.qcow2")
    try Data(try contents(of: qemuPath)).write(to: URL(fileURLWithPath: spindlePath))
    var arguments = ["resize", "-q"]
    if newSize < 4 << 20 { arguments.append("--shrink") }
    if mode != .off { arguments.append("--preallocation=\(mode.rawValue)") }
    try await QcowTools.img(arguments + [qemuPath, String(newSize)])
    let node = try await openQcow2(spindlePath, readOnly: false)
    try await node.truncate(to: newSize, exact: false, preallocation: mode)
    await node.close()
    #expect(try contents(of: qemuPath) == contents(of: spindlePath), "files differ")
    try await QcowTools.img(["check", "-q", spindlePath])
  }

  @Test("a version 2 image with snapshots is not resized, as in QEMU")
  func version2Snapshots() async throws {
    let scratch = try ScratchDirectory()
    let path = scratch.file("disk.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", "-o", "compat=0.10", path, "1M"])
    try await QcowTools.img(["snapshot", "-c", "one", path])
    let qemu = try await QEMUTools.run(QEMUTools.qemuImg, ["resize", path, "2M"])
    let node = try await openQcow2(path, readOnly: false)
    let error = await expectBlockError { try await node.truncate(to: 2 << 20, exact: false) }
    await node.close()
    #expect(qemu.output == "qemu-img: \(error?.message ?? "")\n")
  }
}
