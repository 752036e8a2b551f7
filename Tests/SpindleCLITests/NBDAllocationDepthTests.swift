import BlockTestSupport
import Foundation
import Testing

/// qemu-nbd -A: the `qemu:allocation-depth` meta context, compared with
/// qemu-nbd 7.2 through libnbd's clients on a backing chain and a raw image.
@Suite(
  .requires("qemu-nbd", "qemu-img", "qemu-io", "nbdinfo", "nbdsh"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct NBDAllocationDepthTests {
  /// A qcow2 overlay over a qcow2 base: data only in the base (depth 2),
  /// data and zeroes in the overlay (depth 1), nothing (depth 0); and a raw
  /// image.
  static func images(_ fixture: ImageFixture) async throws -> (top: String, raw: String) {
    let base = fixture.path("base.qcow2")
    let top = fixture.path("top.qcow2")
    let raw = try fixture.makeImage("plain.raw", size: 2 << 20)
    for (tool, arguments) in [
      ("qemu-img", ["create", "-q", "-f", "qcow2", base, "8M"]),
      ("qemu-io", ["-f", "qcow2", "-c", "write -P 0x11 0 2M", "-c", "write -P 0x22 6M 64k", base]),
      ("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top]),
      ("qemu-io", ["-f", "qcow2", "-c", "write -P 0x33 1M 1536k", "-c", "write -z 4M 1M", top]),
    ] {
      let result = try await runProcess(tool, arguments)
      try #require(result.status == 0, "\(result)")
    }
    return (top, raw)
  }

  /// The same client against the activated servers.
  func compare(_ client: String, _ arguments: [String], options: [String]) async throws {
    let spindle = try await runNBDClient(client, arguments + NBDServer.spindle.activated(options))
    let qemu = try await runNBDClient(client, arguments + NBDServer.qemu.activated(options))
    #expect(qemu.status == 0, "\(qemu)")
    #expect(spindle == qemu, "\(client) \(arguments) \(options)")
  }

  @Test(arguments: ["qcow2", "raw"], [false, true])
  func nbdinfoMaps(_ format: String, _ readOnly: Bool) async throws {
    let fixture = try ImageFixture()
    let (top, raw) = try await Self.images(fixture)
    let options = ["-A", "-f", format] + (readOnly ? ["-r"] : []) + [format == "raw" ? raw : top]
    try await compare("nbdinfo", ["--map=qemu:allocation-depth"], options: options)
    try await compare("nbdinfo", ["--map=qemu:allocation-depth", "--totals"], options: options)
    try await compare("nbdinfo", ["--map"], options: options)
    try await compare("nbdinfo", ["--json"], options: options)
  }

  /// Without -A the context does not exist: nbdinfo fails the same way.
  @Test func withoutTheOption() async throws {
    let fixture = try ImageFixture()
    let (top, _) = try await Self.images(fixture)
    let options = ["-f", "qcow2", top]
    let arguments = ["--map=qemu:allocation-depth"]
    let spindle = try await runNBDClient(
      "nbdinfo", arguments + NBDServer.spindle.activated(options))
    let qemu = try await runNBDClient("nbdinfo", arguments + NBDServer.qemu.activated(options))
    #expect(qemu.status != 0)
    #expect(spindle == qemu)
  }

  /// Meta-context queries (LIST with `qemu:`, `base:`, none; SET of both)
  /// and one BLOCK_STATUS answered for both contexts, with and without
  /// REQ_ONE, through a libnbd script.
  @Test func listAndBothContexts() async throws {
    let fixture = try ImageFixture()
    let (top, _) = try await Self.images(fixture)
    let script = """
      h.set_opt_mode(True)
      h.connect_systemd_socket_activation(ARGV)
      for queries in [[], ["qemu:"], ["base:"], ["qemu:allocation-depth"], ["qemu:x"]]:
          h.clear_meta_contexts()
          for q in queries:
              h.add_meta_context(q)
          seen = []
          h.opt_list_meta_context(lambda name: seen.append(name))
          print(queries, seen)
      h.clear_meta_contexts()
      h.add_meta_context("base:allocation")
      h.add_meta_context("qemu:allocation-depth")
      h.opt_go()
      for flags in [0, nbd.CMD_FLAG_REQ_ONE]:
          def extent(name, offset, entries, err):
              print(name, offset, entries)
          h.block_status(8 << 20, 0, extent, flags)
      """
    var outputs: [ToolResult] = []
    for server in NBDServer.allCases {
      let argv = server.command + ["-A", "-f", "qcow2", top]
      let program = "ARGV = [\(argv.map { "'\($0)'" }.joined(separator: ", "))]\n" + script
      // nbdsh runs `python3` from PATH: the system's, which has libnbd's module.
      let nbdsh = try #require(ToolLocator.path(of: "nbdsh"))
      let run = try await ChildProcess.run(
        "/usr/bin/timeout",
        ["-k", "10", "120", "/usr/bin/env", "PATH=/usr/bin:/bin", nbdsh, "-c", program],
        defaultSignals: true)
      let result = ToolResult(
        status: run.termination.status, output: run.output, error: run.error)
      #expect(result.status == 0, "\(server): \(result)")
      outputs.append(result)
    }
    #expect(outputs[0] == outputs[1])
  }
}
