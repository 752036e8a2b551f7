import BlockTestSupport
import Foundation
import Testing

/// `amend -o compat=0.10` of an image with persistent bitmaps, against
/// qemu-img 7.2, which downgrades it and then stores the bitmaps at close
/// as for a version 3 image: the bitmaps extension stays in the version 2
/// header (new tables, the old ones freed), every later open warns that
/// the v2 image's bitmaps are inconsistent, `check` counts their clusters
/// as leaked, a writable open drops the extension, and `bitmap --add` and
/// `convert --bitmaps` refuse the image. Each step runs with qemu-img (or
/// qemu-io) on one copy and Spindle on another: the same output and
/// byte-identical images.
@Suite(.requires("qemu-img", "qemu-io"))
struct DifferentialDowngradeBitmapTests {
  /// A case: the steps after the image is made, each a tool (`img` or
  /// `io`) and its arguments with `IMG` for the image; and whether the
  /// image's first bitmap is in use.
  struct Case: Sendable, CustomTestStringConvertible {
    let name: String
    let steps: [[String]]
    var firstInUse = false
    var testDescription: String { name }
  }

  static let downgrade = ["img", "amend", "-o", "compat=0.10", "IMG"]

  static let cases: [Case] = [
    Case(
      name: "downgraded, then checked and listed",
      steps: [downgrade, ["img", "check", "IMG"], ["img", "info", "--output=json", "IMG"]]),
    Case(
      name: "downgraded, upgraded again",
      steps: [
        downgrade, ["img", "amend", "-o", "compat=1.1", "IMG"],
        ["img", "info", "--output=json", "IMG"], ["img", "check", "-r", "all", "IMG"],
      ]),
    Case(
      name: "downgraded, then written",
      steps: [
        downgrade, ["io", "-c", "write -P 4 2M 4k", "IMG"], ["img", "check", "-r", "all", "IMG"],
      ]),
    Case(
      name: "downgraded with other options",
      steps: [
        ["img", "amend", "-o", "compat=0.10,refcount_bits=8", "IMG"], ["img", "check", "IMG"],
      ]),
    Case(
      name: "bitmaps of a downgraded image cannot be edited or copied",
      steps: [
        downgrade, ["img", "bitmap", "--add", "IMG", "b5"],
        ["img", "convert", "--bitmaps", "-O", "qcow2", "IMG", "IMG.out"],
      ]),
    Case(
      name: "an in-use bitmap",
      steps: [downgrade, ["img", "check", "IMG"]],
      firstInUse: true),
  ]

  @Test(arguments: cases)
  func downgradedBitmapsMatchQEMU(_ testCase: Case) async throws {
    let fixture = try ImageFixture()
    let base = fixture.path("base.qcow2")
    try await qemuImg(["create", "-q", "-f", "qcow2", base, "4M"])
    try await qemuImg(["bitmap", "--add", base, "b0"])
    try await qemuImg(["bitmap", "--add", "-g", "4k", "--disable", base, "b1"])
    try await DifferentialBitmapTests.io("write -P 9 0 64k", base)
    try await DifferentialBitmapTests.io("write -z 1M 64k", base)
    if testCase.firstInUse { try DifferentialBitmapTests.markFirstBitmapInUse(base) }
    let qemuImage = try fixture.copy(base, to: "qemu.qcow2")
    let spindleImage = try fixture.copy(base, to: "spin.qcow2")
    for step in testCase.steps {
      let tool = step[0] == "img" ? "qemu-img" : "qemu-io"
      let arguments = Array(step.dropFirst())
      func on(_ image: String) -> [String] {
        arguments.map { $0.replacingOccurrences(of: "IMG", with: image) }
      }
      let qemu = try await runProcess(tool, on(qemuImage)).masked(replacing: qemuImage)
      let spindle = await runSpindle([tool] + on(spindleImage)).masked(replacing: spindleImage)
      #expect(maskNodeNames(spindle) == maskNodeNames(qemu), "\(step)")
      #expect(
        FileManager.default.contents(atPath: spindleImage)
          == FileManager.default.contents(atPath: qemuImage), "the images differ after \(step)")
    }
  }
}

/// The result with automatic node names (`#block123`) masked.
private func maskNodeNames(_ result: ToolResult) -> ToolResult {
  var result = result
  result.output.replace(#/#block\d+/#, with: "#block")
  result.error.replace(#/#block\d+/#, with: "#block")
  return result
}
