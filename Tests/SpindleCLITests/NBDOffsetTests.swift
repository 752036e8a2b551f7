import BlockTestSupport
import Foundation
import Testing

/// qemu-nbd -o/--offset: a raw node with the offset on top of the image,
/// compared with qemu-nbd 7.2 on identical images: what nbdinfo sees, the
/// bytes nbdcopy reads, a write landing at the offset, and the errors.
@Suite(
  .requires("qemu-nbd", "qemu-img", "qemu-io", "nbdinfo", "nbdcopy", "nbdsh"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct NBDOffsetTests {
  /// A 1 MiB raw image and a 1 MiB qcow2 image with some data, one copy of
  /// each per server.
  static func images(_ fixture: ImageFixture) async throws -> [(raw: String, qcow2: String)] {
    let raw = fixture.path("r.raw")
    let qcow2 = fixture.path("q.qcow2")
    for (tool, arguments) in [
      ("qemu-img", ["create", "-q", "-f", "raw", raw, "1M"]),
      ("qemu-io", ["-f", "raw", "-c", "write -P 7 0 64k", "-c", "write -P 9 512k 4k", raw]),
      ("qemu-img", ["create", "-q", "-f", "qcow2", qcow2, "1M"]),
      ("qemu-io", ["-f", "qcow2", "-c", "write -P 3 64k 64k", "-c", "write -P 4 1020k 4k", qcow2]),
    ] {
      let result = try await runProcess(tool, arguments)
      try #require(result.status == 0, "\(result)")
    }
    var copies: [(String, String)] = []
    for server in NBDServer.allCases {
      let pair = (fixture.path("\(server).raw"), fixture.path("\(server).qcow2"))
      try FileManager.default.copyItem(atPath: raw, toPath: pair.0)
      try FileManager.default.copyItem(atPath: qcow2, toPath: pair.1)
      copies.append(pair)
    }
    return copies
  }

  /// `template` with RAW and QCOW2 replaced by each server's copy.
  static func options(_ template: [String], _ copy: (raw: String, qcow2: String)) -> [String] {
    template.map { $0 == "RAW" ? copy.raw : $0 == "QCOW2" ? copy.qcow2 : $0 }
  }

  /// nbdinfo --json (without `content`, file(1)'s guess), --map and the
  /// bytes nbdcopy reads. (Not --map with an unaligned offset: qemu-nbd
  /// 7.2 never answers that block status.)
  @Test(arguments: [
    ["-f", "raw", "-o", "4096", "RAW"], ["-o", "4096", "RAW"], ["-o", "0x10000", "-r", "RAW"],
    ["-f", "qcow2", "-o", "65536", "QCOW2"], ["-f", "raw", "-o", "1048576", "RAW"],
    ["-f", "raw", "-o", "0", "RAW"], ["-f", "raw", "-o", "4096", "-s", "RAW"],
  ])
  func whatClientsSee(_ template: [String]) async throws {
    let fixture = try ImageFixture()
    let copies = try await Self.images(fixture)
    var results: [[ToolResult]] = []
    for (server, copy) in zip(NBDServer.allCases, copies) {
      let activated = server.activated(Self.options(template, copy))
      var json = try await runNBDClient("nbdinfo", ["--json"] + activated)
      json.output = json.output.split(separator: "\n").filter { !$0.contains("\"content\"") }
        .joined(separator: "\n")
      let map = try await runNBDClient("nbdinfo", ["--map"] + activated)
      let out = fixture.path("out-\(server).raw")
      var copied = try await runNBDClient("nbdcopy", activated + [out])
      copied.output = try Data(contentsOf: URL(fileURLWithPath: out)).base64EncodedString()
      // The probed-raw warning names each server's copy.
      results.append(
        [json, map, copied].map {
          var result = $0
          result.error = result.error.replacingOccurrences(of: copy.raw, with: "RAW")
          return result
        })
    }
    #expect(results[1].allSatisfy { $0.status == 0 }, "qemu-nbd: \(results[1])")
    #expect(results[0] == results[1])
  }

  /// Sizes past an unaligned offset, where --map is not asked.
  @Test func unalignedOffset() async throws {
    let fixture = try ImageFixture()
    let copies = try await Self.images(fixture)
    var results: [ToolResult] = []
    for (server, copy) in zip(NBDServer.allCases, copies) {
      var json = try await runNBDClient(
        "nbdinfo", ["--json"] + server.activated(["-f", "raw", "-o", "1000", copy.raw]))
      json.output = json.output.split(separator: "\n").filter { !$0.contains("\"content\"") }
        .joined(separator: "\n")
      results.append(json)
    }
    #expect(results[1].status == 0, "qemu-nbd: \(results[1])")
    #expect(results[0] == results[1])
  }

  /// A write at the export's start lands at the offset in the image.
  @Test func writeLandsAtTheOffset() async throws {
    let fixture = try ImageFixture()
    let copies = try await Self.images(fixture)
    for (server, copy) in zip(NBDServer.allCases, copies) {
      let argv = server.command + ["-f", "raw", "-o", "8192", copy.raw]
      let program =
        "ARGV = [\(argv.map { "'\($0)'" }.joined(separator: ", "))]\n"
        + "h.connect_systemd_socket_activation(ARGV)\n"
        + "h.pwrite(b'\\x05' * 4096, 0)\nh.pwrite(b'\\x06' * 512, h.get_size() - 512)\nh.flush()\n"
      let nbdsh = try #require(ToolLocator.path(of: "nbdsh"))
      let run = try await ChildProcess.run(
        "/usr/bin/timeout",
        ["-k", "10", "120", "/usr/bin/env", "PATH=/usr/bin:/bin", nbdsh, "-c", program],
        defaultSignals: true)
      #expect(run.termination.status == 0, "\(server): \(run.error)")
    }
    let bytes = try copies.map { try Data(contentsOf: URL(fileURLWithPath: $0.raw)) }
    #expect(bytes[1][8192] == 5 && bytes[1].last == 6)
    #expect(bytes[0] == bytes[1])
  }

  /// qemu-nbd's errors: unparsable offsets at once, a negative one (which
  /// wraps) and one past the end once the image is open; nbdinfo sees the
  /// same.
  @Test(arguments: [["-o", "x"], ["-o", "2M"], ["-o", "-1"], ["-o", "2000000"], ["-o", "1e3"]])
  func errors(_ options: [String]) async throws {
    let fixture = try ImageFixture()
    let copies = try await Self.images(fixture)
    var results: [ToolResult] = []
    for (server, copy) in zip(NBDServer.allCases, copies) {
      results.append(
        try await runNBDClient(
          "nbdinfo", ["--size"] + server.activated(["-f", "raw"] + options + [copy.raw])))
    }
    #expect(results[1].status != 0, "qemu-nbd: \(results[1])")
    // nbdinfo's own last line says whether the server's socket was gone
    // before it connected (refused) or after (reset): timing, not the
    // server's doing.
    func serverSide(_ result: ToolResult) -> ToolResult {
      var result = result
      result.error = result.error.split(separator: "\n", omittingEmptySubsequences: false)
        .filter { !$0.contains("nbd_connect_systemd_socket_activation: ") }
        .joined(separator: "\n")
      return result
    }
    #expect(serverSide(results[0]) == serverSide(results[1]))
  }
}
