import BlockTestSupport
import Foundation
import Testing

/// The multi-call command line: every qemu-img command directly under
/// `spindle` (`spindle info x.qcow2`) behaves as qemu-img's and as
/// `spindle img ...`; `spindle --help` lists every command Spindle has; and
/// `spindle img --help` prints qemu-img 7.2's usage.
@Suite(.requires("qemu-img"))
struct MultiCallDifferentialTests {
  static let commandLines: [[String]] = [
    ["info", "-f", "qcow2", "IMG"],
    ["info", "--output=json", "IMG"],
    ["map", "--output=json", "IMG"],
    ["check", "IMG"],
    ["compare", "IMG", "IMG"],
    ["measure", "-O", "qcow2", "--size", "1G"],
    ["bench", "-c", "1", "-f", "qcow2", "IMG"],
    ["info"],
    ["snapshot", "-l", "IMG"],
  ]

  @Test(arguments: commandLines)
  func directCommandIsQemuImgs(_ arguments: [String]) async throws {
    let fixture = try ImageFixture()
    let image = fixture.path("t.qcow2")
    try await qemuImg(["create", "-q", "-f", "qcow2", image, "1M"])
    let line = arguments.map { $0 == "IMG" ? image : $0 }
    let direct = await runSpindle(["spindle"] + line).masked(replacing: image)
    let viaImg = await runSpindle(["spindle", "img"] + line).masked(replacing: image)
    #expect(direct == viaImg)
    let qemu = try await runProcess("qemu-img", line).masked(replacing: image)
    #expect(direct == qemu)
  }

  /// `spindle --help` names every command; each image command it names
  /// runs directly (its `-h` is qemu-img's help).
  @Test func helpListsEveryCommand() async throws {
    let help = await runSpindle(["spindle", "--help"])
    #expect(help.status == 0)
    let listed = help.output.split(separator: "\n").compactMap { line -> String? in
      // Command lines are indented by two spaces; their descriptions more.
      guard line.hasPrefix("  "), !line.hasPrefix("   "),
        let word = line.split(separator: " ").first
      else { return nil }
      return String(word)
    }
    let imgHelp = await runSpindle(["spindle", "img", "--help"])
    let expected = [
      "amend", "bench", "check", "commit", "compare", "convert", "create", "dd", "info", "map",
      "measure", "rebase", "resize", "io", "img", "serve", "version", "help",
    ]
    #expect(listed == expected)
    // Each image command runs directly: `-h` prints qemu-img's help, or
    // fails as qemu-img's does (`resize` wants its operands first).
    for command in listed where !["io", "img", "serve", "version", "help"].contains(command) {
      let result = await runSpindle(["spindle", command, "-h"])
      let qemu = try await runProcess("qemu-img", [command, "-h"])
      #expect(result.status == qemu.status, "\(command): \(result)")
      #expect(result.error == qemu.error, "\(command) -h")
      if qemu.status == 0 { #expect(result.output == imgHelp.output, "\(command) -h") }
    }
    #expect(await runSpindle(["spindle", "help"]) == help)
    #expect(await runSpindle(["spindle", "-h"]) == help)
    let unknown = await runSpindle(["spindle", "frobnicate"])
    #expect(unknown.status == 1)
    #expect(unknown.error.hasPrefix("spindle: unknown command 'frobnicate'\n"))
  }

  /// `spindle img --help` is qemu-img 7.2's usage, between Spindle's own
  /// first lines and its list of formats.
  @Test func imgHelpIsQemuImgsUsage() async throws {
    let qemu = try await runProcess("qemu-img", ["--help"])
    let spindle = await runSpindle(["spindle", "img", "--help"])
    #expect(spindle.status == qemu.status)
    func usage(_ text: String) -> [Substring] {
      let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
      let end = lines.firstIndex { $0.hasPrefix("Supported formats:") } ?? lines.endIndex
      return Array(lines[..<end].drop { !$0.hasPrefix("usage:") })
    }
    #expect(!usage(qemu.output).isEmpty)
    #expect(usage(spindle.output) == usage(qemu.output))
    #expect(spindle.output.contains("Supported formats: "))
  }
}
