import Foundation
import Testing

/// The built `spindle` executable: multi-call dispatch through links named
/// `qemu-io` and `qemu-img`, and commands read from a real standard input.
///
/// The executable is looked for next to the test bundle (SwiftPM builds it
/// into the same directory, e.g. `.build/debug/spindle`).
@Suite(.enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct ExecutableTests {
  @Test func linkNamedQemuIOIsQemuIO() async throws {
    let links = try SpindleExecutable.links()
    let result = try await runProcess(
      "qemu-io", ["-Z"], environment: ["PATH": links.directory.path])
    #expect(result.status == 1)
    #expect(result.error == "qemu-io: invalid option -- 'Z'\n")
    #expect(result.output.hasPrefix("Usage: qemu-io [OPTIONS]... [-c STRING]... [file]\n"))
  }

  @Test func linkNamedQemuImgIsQemuImg() async throws {
    let links = try SpindleExecutable.links()
    let result = try await runProcess("qemu-img", [], environment: ["PATH": links.directory.path])
    #expect(result.status == 1)
    #expect(
      result.error
        == "qemu-img: Not enough arguments\nTry 'qemu-img --help' for more information\n")
  }

  /// Standard input read by the executable gives the same transcript as the
  /// in-process runs the other tests use.
  @Test func standardInputMatchesInProcessRuns() async throws {
    let input = "aio_write -P 1 0 4k\nread -P 1 0 4k\n\nreadv -v 0 8 8\nfoo\nlength"
    let arguments = ["io", "--image-opts", "driver=memory,size=64k"]
    let executable = try await runProcess(SpindleExecutable.path!, arguments, input: input)
      .masked()
    let inProcess = await runSpindle(["spindle"] + arguments, input: input).masked()
    #expect(executable == inProcess)
    #expect(executable.output.hasPrefix("qemu-io> "))
    #expect(executable.error == "command \"foo\" not found\n")
  }
}

/// Finds the built `spindle` executable and makes links to it.
enum SpindleExecutable {
  static let path: String? = {
    let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
    var directory = bundle.deletingLastPathComponent()
    for _ in 0..<3 {
      let candidate = directory.appendingPathComponent("spindle").path
      if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
      directory = directory.deletingLastPathComponent()
    }
    return nil
  }()

  /// A temporary directory with `qemu-io` and `qemu-img` links to spindle.
  static func links() throws -> ImageFixture {
    let fixture = try ImageFixture()
    for name in ["qemu-io", "qemu-img"] {
      try FileManager.default.createSymbolicLink(
        atPath: fixture.path(name), withDestinationPath: path!)
    }
    return fixture
  }
}
