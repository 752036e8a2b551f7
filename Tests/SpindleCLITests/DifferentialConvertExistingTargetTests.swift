import BlockTestSupport
import Foundation
import Testing

/// `qemu-img convert -n` onto an existing, fully written target, against
/// qemu-img 7.2: the target is opened with `BDRV_O_UNMAP` unless `-S 0`
/// (a `discard` option of `--target-image-opts` does not change that), so
/// the source's zero runs free the target's clusters (qcow2: unallocated
/// zero clusters; raw: holes) where `-S 0` keeps them allocated. The two
/// targets must have the same output, `map --output=json`, `check` and
/// bytes (`map` and `check` only when the target has a snapshot, whose
/// date differs), and read as the source.
@Suite(.requires("qemu-img", "qemu-io"))
struct DifferentialConvertExistingTargetTests {
  /// A case: how the target is created (format and options), what is done
  /// to it before the copy (qemu-img arguments before the image), and the
  /// convert arguments between `convert -n` and the source (`T` for the
  /// target).
  struct Case: Sendable, CustomTestStringConvertible {
    let name: String
    var create = ["-f", "qcow2"]
    var before: [String]?
    var convert: [String]
    var sameBytes = true
    var testDescription: String { name }
  }

  static let cases: [Case] = [
    Case(name: "qcow2", convert: ["-O", "qcow2", "SRC", "T"]),
    Case(name: "qcow2, -S 0", convert: ["-S", "0", "-O", "qcow2", "SRC", "T"]),
    Case(
      name: "qcow2 with 4 KiB clusters", create: ["-f", "qcow2", "-o", "cluster_size=4k"],
      convert: ["-O", "qcow2", "SRC", "T"]),
    Case(
      name: "qcow2 version 2", create: ["-f", "qcow2", "-o", "compat=0.10"],
      convert: ["-O", "qcow2", "SRC", "T"]),
    Case(
      name: "qcow2 with a snapshot", before: ["snapshot", "-c", "s1"],
      convert: ["-O", "qcow2", "SRC", "T"], sameBytes: false),
    Case(
      name: "--target-image-opts discard=unmap, -S 0",
      convert: [
        "-S", "0", "--target-image-opts", "SRC", "driver=qcow2,file.filename=T,discard=unmap",
      ]),
    Case(
      name: "--target-image-opts discard=bad",
      convert: ["--target-image-opts", "SRC", "driver=qcow2,file.filename=T,discard=bad"]),
    Case(name: "raw", create: ["-f", "raw"], convert: ["-O", "raw", "SRC", "T"]),
    Case(name: "raw, -S 0", create: ["-f", "raw"], convert: ["-S", "0", "-O", "raw", "SRC", "T"]),
  ]

  @Test(arguments: cases)
  func existingTargetMatchesQEMU(_ testCase: Case) async throws {
    let fixture = try ImageFixture()
    let source = fixture.path("src.qcow2")
    try await qemuImg(["create", "-q", "-f", "qcow2", source, "4M"])
    let commands = [
      "write -P 1 0 64k", "write -z 64k 64k", "write -P 2 1M 128k", "write -P 0 2M 64k",
      "write -P 3 3M 4k",
    ]
    let written = try await runProcess("qemu-io", commands.flatMap { ["-c", $0] } + [source])
    #expect(written.status == 0, "\(written)")
    let format = testCase.create[1]
    var targets: [String] = []
    for name in ["qemu.img", "spin.img"] {
      let target = fixture.path(name)
      try await qemuImg(["create", "-q"] + testCase.create + [target, "4M"])
      let filled = try await runProcess(
        "qemu-io", ["-f", format, "-c", "write -P 7 0 4M", target])
      #expect(filled.status == 0, "\(filled)")
      if let before = testCase.before { try await qemuImg(before + [target]) }
      targets.append(target)
    }
    func arguments(_ target: String) -> [String] {
      ["convert", "-n"]
        + testCase.convert.map {
          $0 == "SRC"
            ? source
            : $0 == "T" ? target : $0.replacingOccurrences(of: "=T,", with: "=\(target),")
        }
    }
    let qemu = try await runProcess("qemu-img", arguments(targets[0])).masked(
      replacing: targets[0])
    let spindle = await runSpindle(["qemu-img"] + arguments(targets[1])).masked(
      replacing: targets[1])
    #expect(spindle == qemu)
    if testCase.sameBytes {
      #expect(
        FileManager.default.contents(atPath: targets[1])
          == FileManager.default.contents(atPath: targets[0]), "the targets differ")
    }
    var reports: [[ToolResult]] = [[], []]
    for (index, target) in targets.enumerated() {
      for command in [["map", "--output=json"], ["check"]] where format == "qcow2" {
        reports[index].append(
          try await runProcess("qemu-img", command + [target]).masked(replacing: target))
      }
      let compare = try await runProcess(
        "qemu-img", ["compare", "-F", format, source, target])
      #expect(compare.status == (qemu.status == 0 ? 0 : 1), "\(compare)")
    }
    #expect(reports[1] == reports[0])
  }
}
