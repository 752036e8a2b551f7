import BlockTestSupport
import Foundation
import Testing

/// Overlap checks against qemu-io: a qcow2 image whose L2 entry was made to
/// point at a metadata cluster gets the same writes through qemu-io and
/// `spindle io`; the messages, exit status and resulting files must be the
/// same (QEMU marks the image corrupt in its header, and refuses to reopen it
/// read/write).
@Suite(.requires("qemu-img", "qemu-io"))
struct DifferentialOverlapTests {
  /// A corruption: which metadata cluster the first L2 entry is redirected
  /// to, and what runs against the image.
  struct Case: Sendable, CustomTestStringConvertible {
    var name: String
    /// The L2 entry's new host offset, from the default layout of a
    /// 64 KiB-cluster image: header 0, refcount table 0x10000, refcount
    /// block 0x20000, L1 0x30000, L2 0x40000.
    var target: UInt64
    var openOptions: [String] = []
    var commands: [String] = ["write -P 7 0 4k", "read -P 7 0 4k", "write 64k 4k"]
    /// Which table entry is redirected: the first L2 entry, or with
    /// 0x30000 the first L1 entry.
    var entryOffset: UInt64 = 0x40000
    /// Options before the image (such as `-r`).
    var toolOptions: [String] = []
    var testDescription: String { name }
  }

  static let cases: [Case] = [
    Case(name: "active L1 table", target: 0x30000),
    Case(name: "refcount table", target: 0x10000),
    Case(name: "refcount block", target: 0x20000),
    Case(name: "active L2 table", target: 0x40000),
    Case(name: "unaligned write into the L1 cluster", target: 0x30000, commands: ["write 100 3"]),
    Case(
      name: "overlap-check=none lets the write through", target: 0x30000,
      openOptions: ["overlap-check=none"], commands: ["write -P 0 0 512"]),
    Case(
      name: "overlap-check.active-l1=off lets it through", target: 0x30000,
      openOptions: ["overlap-check.active-l1=off"], commands: ["write -P 0 0 512"]),
    Case(
      name: "constant set does not check refcount blocks", target: 0x20000,
      openOptions: ["overlap-check=constant"], commands: ["write -P 0 4 4"]),
    Case(
      name: "bad overlap-check value", target: 0x30000, openOptions: ["overlap-check=foo"]),
    Case(
      name: "unaligned data cluster, read-only", target: 0x50200,
      commands: ["read 0 512", "read 0 512", "map"], toolOptions: ["-r"]),
    Case(
      name: "unaligned data cluster, writable", target: 0x50200,
      commands: ["read 0 512", "read 0 512"]),
    Case(name: "unaligned data cluster, written", target: 0x50200, commands: ["write 0 512"]),
    Case(name: "unaligned data cluster, mapped", target: 0x50200, commands: ["map"]),
    Case(
      name: "unaligned L2 table, zero-written", target: 0x40200,
      commands: ["write -z 0 64k", "read 0 1"], entryOffset: 0x30000),
    Case(
      name: "unaligned L2 table, discarded", target: 0x40200, commands: ["discard 0 64k"],
      entryOffset: 0x30000),
    Case(
      name: "unaligned L2 table, written", target: 0x40200, commands: ["write 0 1"],
      entryOffset: 0x30000),
    Case(
      name: "conflicting template", target: 0x30000,
      openOptions: ["overlap-check=all", "overlap-check.template=none"]),
  ]

  /// Makes the corrupt image in `directory`: 64 KiB written at 0, then its
  /// L2 entry pointed (COPIED) at `target`.
  private func makeImage(in directory: String, target: UInt64, entryOffset: UInt64 = 0x40000)
    async throws -> String
  {
    let path = "\(directory)/img.qcow2"
    _ = try await runProcess("qemu-img", ["create", "-q", "-f", "qcow2", path, "1M"])
    _ = try await runProcess("qemu-io", ["-c", "write -P 1 0 64k", path])
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    defer { try? handle.close() }
    try handle.seek(toOffset: entryOffset)
    let entry = target | 1 << 63
    try handle.write(
      contentsOf: Data((0..<8).map { UInt8(truncatingIfNeeded: entry >> (56 - $0 * 8)) }))
    return path
  }

  @Test("writes landing on metadata", arguments: cases)
  func sameMessagesAndImage(_ testCase: Case) async throws {
    let fixture = try ImageFixture()
    var results: [ToolResult] = []
    var images: [String] = []
    for (index, directory) in [fixture.path("q"), fixture.path("s")].enumerated() {
      try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
      let image = try await makeImage(
        in: directory, target: testCase.target, entryOffset: testCase.entryOffset)
      let options = (["driver=qcow2", "file.filename=\(image)"] + testCase.openOptions)
        .joined(separator: ",")
      let arguments =
        testCase.toolOptions + ["--image-opts"] + testCase.commands.flatMap { ["-c", $0] }
        + [options]
      // A second run: a corrupt image must not open read/write again.
      let again = ["-c", "read 0 512", image]
      let result =
        index == 0
        ? try await runProcess("qemu-io", arguments) : await runSpindle(["qemu-io"] + arguments)
      let second =
        index == 0
        ? try await runProcess("qemu-io", again) : await runSpindle(["qemu-io"] + again)
      results.append(result.masked(replacing: image))
      results.append(second.masked(replacing: image))
      images.append(image)
    }
    #expect(results[0] == results[2], "first run\nqemu-io: \(results[0])\nspindle: \(results[2])")
    #expect(results[1] == results[3], "reopen\nqemu-io: \(results[1])\nspindle: \(results[3])")
    let qemuBytes = try Data(contentsOf: URL(fileURLWithPath: images[0]))
    let spindleBytes = try Data(contentsOf: URL(fileURLWithPath: images[1]))
    #expect(qemuBytes == spindleBytes, "the two images differ")
  }

  @Test("a corrupt image opens read-only")
  func corruptImageReadsReadOnly() async throws {
    let fixture = try ImageFixture()
    let image = try await makeImage(in: fixture.directory.path, target: 0x30000)
    let failed = await runSpindle(["qemu-io", "-c", "write 0 512", image])
    #expect(failed.status == 1)
    #expect(failed.error.contains("qcow2: Marking image as corrupt"))
    let readOnly = await runSpindle(["qemu-io", "-r", "-c", "read -P 0 64k 4k", image])
    let qemu = try await runProcess("qemu-io", ["-r", "-c", "read -P 0 64k 4k", image])
    #expect(readOnly.masked(replacing: image) == qemu.masked(replacing: image))
    #expect(readOnly.status == 0)
  }
}
