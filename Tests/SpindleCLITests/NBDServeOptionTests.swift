import BlockTestSupport
import Foundation
import Testing

/// `spindle serve`'s command line against qemu-nbd 7.2's: the same messages
/// and exit codes for bad options, and a clear refusal of the options Spindle
/// does not implement yet.
@Suite(
  .requires("qemu-nbd", "qemu-img"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct NBDServeOptionTests {
  static let cases: [[String]] = [
    ["--cache=foo", "IMG"], ["--aio=foo", "IMG"], ["--discard=foo", "IMG"],
    ["--detect-zeroes=foo", "IMG"], ["--detect-zeroes=unmap", "IMG"], ["-e", "-1", "IMG"],
    ["-e", "x", "IMG"], [], ["IMG", "IMG"], ["--bogus", "IMG"], ["-k", "relative.sock", "IMG"],
    ["--image-opts", "-f", "raw", "IMG"], ["-n", "--cache=none", "IMG"],
    ["-x", String(repeating: "x", count: 4097), "IMG"],
    ["-D", String(repeating: "d", count: 4097), "IMG"],
    ["-f", "qcow2", "-k", "DIR/nodir/s.sock", "IMG"],
    ["-f", "qcow2", "-k", "DIR/s.sock", "DIR/missing"],
    ["-f", "qcow2", "-k", "DIR/s.sock", "IMG"],
  ]

  @Test(arguments: cases)
  func badOptionsAsQemuNbd(_ template: [String]) async throws {
    let fixture = try ImageFixture()
    let image = fixture.path("a.raw")
    try fixture.makeImage("a.raw")
    let arguments = template.map {
      $0 == "IMG" ? image : $0.replacingOccurrences(of: "DIR", with: fixture.directory.path)
    }
    // Both named `qemu-nbd` (messages quote argv[0]), both bounded in time.
    let qemuPath = try #require(ToolLocator.path(of: "qemu-nbd"))
    let directory = String(qemuPath[..<qemuPath.lastIndex(of: "/")!])
    let search = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin"
    let qemu = try await ChildProcess.run(
      "/usr/bin/timeout",
      ["-k", "10", "120", "/usr/bin/env", "PATH=\(directory):\(search)", "qemu-nbd"] + arguments,
      defaultSignals: true)
    try? FileManager.default.removeItem(atPath: fixture.path("s.sock"))
    let links = try SpindleExecutable.links()
    let link = links.path("qemu-nbd")
    try FileManager.default.createSymbolicLink(
      atPath: link, withDestinationPath: SpindleExecutable.path!)
    let spindle = try await ChildProcess.run(
      "/usr/bin/timeout",
      ["-k", "10", "120", "/usr/bin/env", "PATH=\(links.directory.path):\(search)", "qemu-nbd"]
        + arguments, defaultSignals: true)
    #expect(qemu.termination.status == 1, "\(qemu)")
    #expect(spindle.termination == qemu.termination)
    #expect(spindle.output == qemu.output)
    #expect(spindle.error == qemu.error)
  }

  @Test(arguments: [
    (["-L"], "-L/--list"), (["--fork"], "--fork"),
    (["--tls-creds", "t"], "--tls-creds"), (["--object", "secret,id=s,data=x"], "--object"),
    (["-c", "/dev/nbd0"], "-c/--connect"),
  ])
  func unimplementedOptionsAreRefused(_ options: [String], _ name: String) async throws {
    let result = await runSpindle(["spindle", "serve"] + options + ["x.raw"])
    #expect(
      result
        == ToolResult(
          status: 1, output: "", error: "qemu-nbd: \(name) is not supported by Spindle yet\n"))
  }

  @Test func helpAndVersion() async throws {
    let help = await runSpindle(["qemu-nbd", "--help"])
    #expect(help.status == 0 && help.output.hasPrefix("Usage: qemu-nbd [OPTIONS] FILE\n"))
    let version = await runSpindle(["spindle", "serve", "-V"])
    #expect(version.status == 0 && version.output.hasPrefix("qemu-nbd 7.2"))
  }
}
