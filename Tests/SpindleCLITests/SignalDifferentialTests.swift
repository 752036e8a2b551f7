import BlockTestSupport
import Foundation
import Testing

/// `sigraise` and `abort` end the program as qemu-io's do (or leave it
/// running), compared with the real qemu-io by running the spindle executable
/// under the name `qemu-io`: same output before the signal, same termination
/// status (the signal number when killed by it).
@Suite(
  .requires("qemu-io"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct SignalDifferentialTests {
  @Test(arguments: [
    ["sigraise 15"], ["sigraise 2"], ["sigraise 10"], ["sigraise 13"], ["sigraise 17"],
    ["sigraise 0"], ["sigraise 65"], ["sigraise 6"], ["sigraise 11"], ["abort"],
  ])
  func sameOutputAndTermination(_ commands: [String]) async throws {
    let links = try SpindleExecutable.links()
    let image = try links.makeImage("disk.raw")
    let arguments =
      ["-f", "raw", image, "-c", "write -q 0 1"] + commands.flatMap { ["-c", $0] } + [
        "-c", "length",
      ]
    let qemu = try await runProcess("qemu-io", arguments)
    let spindle = try await runProcess(
      "qemu-io", arguments,
      environment: ["PATH": links.directory.path])
    #expect(spindle == qemu)
  }
}
