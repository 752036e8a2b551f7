import BlockTestSupport
import Foundation
import Testing

/// qemu-nbd -B: persistent qcow2 dirty bitmaps exported as
/// `qemu:dirty-bitmap:NAME` meta contexts, and qemu-nbd 7.2's errors for a
/// missing or inconsistent bitmap, compared with qemu-nbd on identical
/// copies of an image through libnbd's clients.
@Suite(
  .requires("qemu-nbd", "qemu-img", "qemu-io", "nbdinfo", "nbdsh"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct NBDDirtyBitmapTests {
  /// A 4 MiB qcow2 image with bitmaps b0 (enabled), b1 (disabled) and b2
  /// (enabled, 512 KiB granularity), dirtied by qemu-io writes; with
  /// `leftInUse` the last qemu-io is killed, so every bitmap stays in use
  /// (inconsistent). One copy per server.
  static func images(_ fixture: ImageFixture, leftInUse: Bool = false) async throws -> [String] {
    let image = fixture.path("b.qcow2")
    var steps: [(String, [String])] = [
      ("qemu-img", ["create", "-q", "-f", "qcow2", image, "4M"]),
      ("qemu-img", ["bitmap", "--add", image, "b0"]),
      ("qemu-img", ["bitmap", "--add", "--disable", image, "b1"]),
      ("qemu-img", ["bitmap", "--add", "-g", "512k", image, "b2"]),
      ("qemu-io", ["-f", "qcow2", "-c", "write -P 1 100k 64k", "-c", "write -z 1M 8k", image]),
      ("qemu-img", ["bitmap", "--enable", image, "b1"]),
      ("qemu-io", ["-f", "qcow2", "-c", "write -P 2 3M 4k", image]),
      ("qemu-img", ["bitmap", "--disable", image, "b1"]),
      ("qemu-io", ["-f", "qcow2", "-c", "discard 2M 64k", image]),
    ]
    if leftInUse {
      steps.append(("qemu-io", ["-f", "qcow2", "-c", "sigraise 9", image]))
    }
    for (tool, arguments) in steps {
      let result = try await runProcess(tool, arguments)
      if !(leftInUse && arguments.contains("sigraise 9")) {
        try #require(result.status == 0, "\(result)")
      }
    }
    var copies: [String] = []
    for server in NBDServer.allCases {
      let copy = fixture.path("\(server).qcow2")
      try FileManager.default.copyItem(atPath: image, toPath: copy)
      copies.append(copy)
    }
    return copies
  }

  /// The same client against the activated servers, each on its copy.
  static func compare(
    _ client: String, _ arguments: [String], options: [String], leftInUse: Bool = false
  ) async throws {
    let fixture = try ImageFixture()
    let copies = try await images(fixture, leftInUse: leftInUse)
    var results: [ToolResult] = []
    for (server, copy) in zip(NBDServer.allCases, copies) {
      results.append(
        try await runNBDClient(client, arguments + server.activated(options + [copy])))
    }
    #expect(results[0] == results[1], "\(arguments) \(options)")
    #expect(
      leftInUse == (results[1].status != 0), "qemu-nbd: \(results[1])")
  }

  @Test(arguments: [
    ("b0", ["-B", "b0"]), ("b0", ["-B", "b0", "-r"]), ("b1", ["-B", "b1"]),
    ("b2", ["-B", "b0", "-B", "b2"]), ("b0", ["-B", "b0", "-s"]), ("b1", ["-B", "b1", "-r"]),
  ])
  func nbdinfoMap(_ bitmap: String, _ options: [String]) async throws {
    for extra in [[], ["--totals"]] {
      try await Self.compare(
        "nbdinfo", ["--map=qemu:dirty-bitmap:\(bitmap)"] + extra,
        options: ["-f", "qcow2"] + options)
    }
    try await Self.compare("nbdinfo", ["--json"], options: ["-f", "qcow2", "-A"] + options)
  }

  /// qemu-nbd's errors: a bitmap not found (the last -B is looked up
  /// first), an inconsistent one (read-only or not); nbdinfo sees the same.
  @Test(arguments: [
    (["-B", "nope"], false), (["-B", "nope1", "-B", "nope2"], false),
    (["-B", "b0", "-B", "nope"], false), (["-B", "b0"], true), (["-B", "b1", "-r"], true),
  ])
  func errors(_ options: [String], _ leftInUse: Bool) async throws {
    let fixture = try ImageFixture()
    let copies = try await Self.images(fixture, leftInUse: leftInUse)
    var results: [ToolResult] = []
    for (server, copy) in zip(NBDServer.allCases, copies) {
      results.append(
        try await runNBDClient(
          "nbdinfo", ["--size"] + server.activated(["-f", "qcow2"] + options + [copy])))
    }
    #expect(results[1].status != 0, "qemu-nbd: \(results[1])")
    #expect(results[0] == results[1])
  }

  /// Meta-context lists (every context, `qemu:`, `qemu:dirty-bitmap:`, one
  /// bitmap, an unknown one), then BLOCK_STATUS of base:allocation and two
  /// bitmaps with and without REQ_ONE, before and after a write through the
  /// export (which marks the enabled bitmap, not the disabled one).
  @Test func contextsAndLiveMarking() async throws {
    let fixture = try ImageFixture()
    let copies = try await Self.images(fixture)
    let script = """
      h.set_opt_mode(True)
      h.connect_systemd_socket_activation(ARGV)
      for queries in [[], ["qemu:"], ["qemu:dirty-bitmap:"], ["qemu:dirty-bitmap:b1"],
                      ["qemu:dirty-bitmap:x"], ["base:"]]:
          h.clear_meta_contexts()
          for q in queries:
              h.add_meta_context(q)
          seen = []
          h.opt_list_meta_context(lambda name: seen.append(name))
          print(queries, seen)
      h.clear_meta_contexts()
      for name in ["base:allocation", "qemu:dirty-bitmap:b1", "qemu:dirty-bitmap:b0"]:
          h.add_meta_context(name)
      h.opt_go()
      def extent(name, offset, entries, err):
          print(name, offset, entries)
      for flags in [0, nbd.CMD_FLAG_REQ_ONE]:
          h.block_status(4 << 20, 0, extent, flags)
      h.pwrite(b"x" * 4096, 2 << 20)
      h.zero(65536, 3 << 20)
      h.block_status(4 << 20, 0, extent)
      h.block_status(65536, 3 << 20, extent)
      """
    var outputs: [ToolResult] = []
    for (server, copy) in zip(NBDServer.allCases, copies) {
      let argv = server.command + ["-B", "b0", "-B", "b1", "-B", "b2", "-f", "qcow2", copy]
      let program = "ARGV = [\(argv.map { "'\($0)'" }.joined(separator: ", "))]\n" + script
      // nbdsh runs `python3` from PATH: the system's, which has libnbd's module.
      let nbdsh = try #require(ToolLocator.path(of: "nbdsh"))
      let run = try await ChildProcess.run(
        "/usr/bin/timeout",
        ["-k", "10", "120", "/usr/bin/env", "PATH=/usr/bin:/bin", nbdsh, "-c", program],
        defaultSignals: true)
      let result = ToolResult(status: run.termination.status, output: run.output, error: run.error)
      #expect(result.status == 0, "\(server): \(result)")
      outputs.append(result)
    }
    #expect(outputs[0] == outputs[1])
  }
}
