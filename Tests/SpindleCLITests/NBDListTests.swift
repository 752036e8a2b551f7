import BlockTestSupport
import Foundation
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// `qemu-nbd -L` against `spindle serve -L`: each lists the same server
/// (qemu-nbd, spindle serve, nbdkit with several exports) with the same
/// output, and fails the same way when no server answers.
@Suite(
  .requires("qemu-nbd", "qemu-img", "nbdkit"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct NBDListTests {
  /// Lists with `lister` (qemu-nbd or spindle serve), bounded in time.
  static func list(with lister: NBDServer, _ arguments: [String]) async throws -> ToolResult {
    let command = lister.command + ["-L"] + arguments
    let result = try await ChildProcess.run(
      "/usr/bin/timeout", ["-k", "10", "120"] + command, defaultSignals: true)
    return ToolResult(
      status: result.termination.status, output: result.output, error: result.error)
  }

  /// Both listers' results against the same server, qemu-nbd's first.
  static func listBoth(_ arguments: [String]) async throws -> [ToolResult] {
    [try await list(with: .qemu, arguments), try await list(with: .spindle, arguments)]
  }

  static let serverOptions: [[String]] = [
    ["-f", "qcow2", "-x", "foo", "-D", "a description"],
    ["-f", "qcow2", "-r", "-A", "-e", "2"],
    // A probed raw image: minimum block 512; -e 0 adds multi-conn.
    ["-e", "0", "-D", ""],
  ]

  @Test(arguments: serverOptions)
  func bothListersAgreeOnBothServers(_ options: [String]) async throws {
    let fixture = try ImageFixture()
    var results: [ToolResult] = []
    for server in NBDServer.allCases {
      // Each server its own image: a served qcow2 is locked.
      let image: String
      if options.contains("qcow2") {
        image = fixture.path("\(server).qcow2")
        let created = try await runProcess(
          "qemu-img", ["create", "-q", "-f", "qcow2", image, "64M"])
        try #require(created.status == 0, "\(created)")
      } else {
        image = try fixture.makeImage("\(server).raw")
      }
      let socket = fixture.path("\(server).sock")
      let running = try await BackgroundNBDServer(
        server, socket: socket, options: ["-t"] + options + [image])
      results += try await Self.listBoth(["-k", socket])
      #expect(await running.terminate().status == 0)
    }
    #expect(results[0].status == 0 && results[0].error.isEmpty, "\(results[0])")
    #expect(results[0].output.hasPrefix("exports available: 1\n"), "\(results[0])")
    for (index, result) in results.enumerated() {
      #expect(result == results[0], "listing \(index)")
    }
  }

  @Test func listingOverTCP() async throws {
    let fixture = try ImageFixture()
    let image = try fixture.makeImage("a.raw")
    let port = try NBDSocket.freePort()
    let running = try await BackgroundNBDServer(
      .spindle, port: port, options: ["-t", "-x", "tcp", "-f", "raw", image])
    let results = try await Self.listBoth(["-b", "127.0.0.1", "-p", "\(port)"])
    #expect(await running.terminate().status == 0)
    #expect(results[0].status == 0 && results[0].output.contains(" export: 'tcp'\n"))
    #expect(results[1] == results[0])
  }

  /// nbdkit serves several exports (the exportname filter), with and
  /// without block sizes (nbdkit's maximum 0xffffffff is not a multiple
  /// of its minimum: QEMU 7.2 accepts it), as an older server (oldstyle; no
  /// structured replies, so no meta contexts; not fixed newstyle, which
  /// cannot list: status 1).
  static let nbdkitCases: [([String], Int32)] = [
    (
      [
        "--filter=exportname", "memory", "1M", "exportname-list=explicit", "exportname=a",
        "exportname=bee", "exportdesc=fixed:shared text",
      ], 0
    ),
    (["--filter=blocksize-policy", "memory", "1M", "blocksize-minimum=512"], 0),
    (["-o", "memory", "1M"], 0), (["--no-sr", "memory", "1M"], 0),
    (["--mask-handshake=0", "memory", "1M"], 1),
  ]

  @Test(arguments: nbdkitCases)
  func nbdkitServers(_ arguments: [String], _ status: Int32) async throws {
    let fixture = try ImageFixture()
    let socket = fixture.path("k.sock")
    let nbdkit = try #require(ToolLocator.path(of: "nbdkit"))
    let running = try await BackgroundNBDServer(
      command: [nbdkit, "-f", "-U", socket] + arguments, socket: socket)
    let results = try await Self.listBoth(["-k", socket])
    _ = await running.terminate()
    #expect(results[0].status == status, "\(results[0])")
    #expect(results[1] == results[0])
    if arguments.contains("exportname=bee") {
      #expect(results[0].output.hasPrefix("exports available: 2\n"))
    }
  }

  @Test func noServer() async throws {
    let fixture = try ImageFixture()
    let port = try NBDSocket.freePort()
    for arguments in [
      ["-k", fixture.path("none.sock")], ["-b", "127.0.0.1", "-p", "\(port)"],
      // Options a listing accepts: they change nothing.
      ["-r", "-t", "-e", "3", "-v", "-l", "snapshot.id=1", "-k", fixture.path("none.sock")],
      ["--object", "secret,id=s,data=x", "-k", fixture.path("none.sock")],
    ] {
      let results = try await Self.listBoth(arguments)
      #expect(results[0].status == 1 && results[0].error.contains("Failed to connect to"))
      #expect(results[1] == results[0], "\(arguments)")
    }
  }
}
