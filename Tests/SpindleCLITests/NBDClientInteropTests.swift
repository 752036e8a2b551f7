import BlockCore
import BlockDrivers
import BlockTestSupport
import Foundation
import NBD
import Testing

/// `spindle` in a process of its own, invoked through a link named
/// `arguments[0]` (`qemu-img`, `qemu-io`): its NBD connections then wait for
/// nothing that this test process's other tests keep busy (in-process runs
/// share one block-layer thread and Swift's pool with every test, which a
/// full run under AddressSanitizer can hold past qemu-nbd's 10-second
/// handshake limit).
func runSpindleProcess(_ arguments: [String]) async throws -> ToolResult {
  let links = try #require(SpindleLinks.directory)
  let result = try await ChildProcess.run(
    "/usr/bin/env", ["PATH=\(links)"] + arguments)
  return ToolResult(
    status: result.termination.status, output: result.output, error: result.error)
}

/// A folder with `qemu-img` and `qemu-io` links to the spindle executable,
/// made once per test run.
enum SpindleLinks {
  private static let fixture = try? SpindleExecutable.links()
  static let directory: String? = fixture.map {
    URL(fileURLWithPath: $0.path("qemu-img")).deletingLastPathComponent().path
  }
}

/// Spindle's `nbd` client driver against real servers (qemu-nbd 7.2 and
/// nbdkit, over Unix sockets in a temporary folder), compared with QEMU's
/// own client (qemu-img and qemu-io 7.2) on the same server or on servers of
/// identical images.
@Suite(.requires("qemu-nbd", "qemu-img", "qemu-io"))
struct NBDClientInteropTests {
  /// A 16 MiB raw image with data at 0 and 5 MiB and a zeroed range.
  static func image(_ fixture: ImageFixture, name: String = "a.raw") async throws -> String {
    let path = fixture.path(name)
    try await qemuImg(["create", "-q", "-f", "raw", path, "16M"])
    let written = try await runProcess(
      "qemu-io",
      [
        "-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "write -P 0x5c 5M 192k",
        "-c", "write -z 8M 1M", path,
      ])
    try #require(written.status == 0, "\(written)")
    return path
  }

  /// qemu-nbd serving `image` on a socket in `fixture` (persistent unless
  /// told otherwise).
  static func qemuNBD(
    _ fixture: ImageFixture, _ image: String, name: String = "q.sock", options: [String] = ["-t"]
  ) async throws -> BackgroundNBDServer {
    try await BackgroundNBDServer(
      .qemu, socket: fixture.path(name), options: options + ["-f", "raw", image])
  }

  static func url(_ server: BackgroundNBDServer, export: String = "") -> String {
    "nbd+unix:///\(export)?socket=\(server.socket)"
  }

  /// `spindle img ARGS` and `qemu-img ARGS`: same output, same status.
  func compareImg(_ arguments: [String]) async throws {
    let spindle = try await runSpindleProcess(["qemu-img"] + arguments)
    let qemu = try await runProcess("qemu-img", arguments)
    #expect(spindle == qemu, "\(arguments)")
  }

  @Test func infoOfEveryNameFormMatchesQEMU() async throws {
    let fixture = try ImageFixture()
    let server = try await Self.qemuNBD(fixture, try await Self.image(fixture))
    let socket = server.socket
    for name in [
      Self.url(server), "nbd+unix://?socket=\(socket)", "nbd:unix:\(socket)",
      #"json:{"driver":"nbd","server":{"type":"unix","path":"\#(socket)"}}"#,
      #"json:{"driver":"raw","file":{"driver":"nbd","path":"\#(socket)"}}"#,
    ] {
      try await compareImg(["info", name])
      try await compareImg(["info", "--output=json", name])
    }
    try await compareImg(["info", "-f", "nbd", Self.url(server)])
    try await compareImg([
      "info", "--image-opts", "driver=nbd,server.type=unix,server.path=\(socket)",
    ])
    _ = await server.terminate()
  }

  @Test func mapMatchesQEMU() async throws {
    let fixture = try ImageFixture()
    let server = try await Self.qemuNBD(fixture, try await Self.image(fixture))
    try await compareImg(["map", "--output=json", Self.url(server)])
    try await compareImg(["map", Self.url(server)])
    try await compareImg(["map", "--output=json", "-f", "nbd", Self.url(server)])
    _ = await server.terminate()
  }

  /// `x-dirty-bitmap` reads another context as if it were
  /// `base:allocation` (here qemu-nbd's `-A` allocation depth over a
  /// backing chain of three, depth 3 clamped to 2); a context the server lacks fails the open.
  @Test func dirtyBitmapContextMatchesQEMU() async throws {
    let fixture = try ImageFixture()
    let base = fixture.path("base.qcow2")
    let middle = fixture.path("middle.qcow2")
    let top = fixture.path("top.qcow2")
    try await qemuImg(["create", "-q", "-f", "qcow2", base, "4M"])
    try await qemuImg(["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", middle])
    try await qemuImg(["create", "-q", "-f", "qcow2", "-b", middle, "-F", "qcow2", top])
    for (image, command) in [(base, "write -P 1 0 256k"), (top, "write -P 2 64k 64k")] {
      let written = try await runProcess("qemu-io", ["-f", "qcow2", "-c", command, image])
      try #require(written.status == 0, "\(written)")
    }
    let server = try await BackgroundNBDServer(
      .qemu, socket: fixture.path("d.sock"), options: ["-t", "-A", "-f", "qcow2", top])
    let options = "driver=nbd,server.type=unix,server.path=\(server.socket)"
    try await compareImg([
      "map", "--output=json", "--image-opts", options + ",x-dirty-bitmap=qemu:allocation-depth",
    ])
    try await compareImg([
      "map", "--output=json", "--image-opts", options + ",x-dirty-bitmap=qemu:dirty-bitmap:nope",
    ])
    _ = await server.terminate()
  }

  @Test func compareMatchesQEMU() async throws {
    let fixture = try ImageFixture()
    let image = try await Self.image(fixture)
    // The served file is locked by qemu-nbd: compare with copies.
    let same = try fixture.copy(image, to: "same.raw")
    let other = try fixture.copy(image, to: "other.raw")
    let written = try await runProcess("qemu-io", ["-f", "raw", "-c", "write -P 9 5M 512", other])
    try #require(written.status == 0, "\(written)")
    let server = try await Self.qemuNBD(fixture, image)
    try await compareImg(["compare", Self.url(server), same])
    try await compareImg(["compare", "-f", "raw", "-F", "raw", Self.url(server), other])
    try await compareImg(["compare", "-s", Self.url(server), other])
    _ = await server.terminate()
  }

  /// TCP on 127.0.0.1 (a port found free a moment before), and a port
  /// nobody listens on.
  @Test func tcpMatchesQEMU() async throws {
    let fixture = try ImageFixture()
    let image = try await Self.image(fixture)
    let port = try NBDSocket.freePort()
    let server = try await BackgroundNBDServer(
      .qemu, port: port, options: ["-t", "-x", "exp", "-f", "raw", image])
    for name in [
      "nbd://127.0.0.1:\(port)/exp", "nbd+tcp://127.0.0.1:\(port)/exp",
      "nbd:127.0.0.1:\(port):exportname=exp",
    ] {
      try await compareImg(["info", name])
      try await compareImg(["map", "--output=json", name])
    }
    _ = await server.terminate()
    let closed = try NBDSocket.freePort()
    try await compareImg(["info", "nbd://127.0.0.1:\(closed)/exp"])
    try await compareImg(["info", "nbd:localhost:\(closed)"])
  }

  /// A qemu-nbd without `-t` serves one client and exits: QEMU probes the
  /// format through the connection it keeps, and so must Spindle.
  @Test func probingUsesTheOneConnection() async throws {
    let fixture = try ImageFixture()
    let server = try await Self.qemuNBD(fixture, try await Self.image(fixture), options: [])
    let spindle = try await runSpindleProcess(["qemu-img", "info", Self.url(server)])
    #expect(spindle.status == 0, "\(spindle)")
    #expect(spindle.output.contains("file format: raw"))
    #expect(await server.waitForExit().status == 0)
  }

  @Test func convertFromAndToNBD() async throws {
    let fixture = try ImageFixture()
    let image = try await Self.image(fixture)
    let server = try await Self.qemuNBD(fixture, image)
    let copy = fixture.path("copy.qcow2")
    let converted = try await runSpindleProcess([
      "qemu-img", "convert", "-O", "qcow2", Self.url(server), copy,
    ])
    #expect(converted == ToolResult(status: 0, output: "", error: ""))
    let same = try await runProcess("qemu-img", ["compare", "-f", "raw", image, copy])
    #expect(same.status == 0, "\(same)")
    _ = await server.terminate()

    // Into an export: written through Spindle's client, read back by qemu-img.
    let target = fixture.path("target.raw")
    try await qemuImg(["create", "-q", "-f", "raw", target, "16M"])
    let targetServer = try await Self.qemuNBD(fixture, target, name: "t.sock")
    let written = try await runSpindleProcess([
      "qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", copy, Self.url(targetServer),
    ])
    #expect(written.status == 0, "\(written)")
    _ = await targetServer.terminate()
    let back = try await runProcess(
      "qemu-img", ["compare", "-f", "raw", "-F", "raw", image, target])
    #expect(back.status == 0, "\(back)")
  }

  /// The same qemu-io script through Spindle's client and QEMU's, each on
  /// its own qemu-nbd serving a copy of one image: same output, same bytes.
  @Test func ioScriptsMatchQEMU() async throws {
    let fixture = try ImageFixture()
    let image = try await Self.image(fixture)
    let mine = try fixture.copy(image, to: "mine.raw")
    let theirs = try fixture.copy(image, to: "theirs.raw")
    let script = [
      "read -P 0xab 0 64k", "read -v 1M 32", "write -P 0x11 4k 8k", "write -P 0x22 -f 64k 4k",
      "write -z 1M 64k", "write -z -u 2M 64k", "discard 5M 64k", "flush", "read -P 0x11 4k 8k",
      "read -P 0 1M 64k", "readv -P 0x5c 5M+64k 4k 4k", "map", "aio_write -P 0x33 3M 4k",
      "aio_flush", "read -P 0x33 3M 4k", "write 16M 512", "read 15M 2M",
    ]
    let arguments = script.flatMap { ["-c", $0] } + ["-f", "raw"]
    let mineServer = try await Self.qemuNBD(fixture, mine, name: "m.sock")
    let theirsServer = try await Self.qemuNBD(fixture, theirs, name: "t.sock")
    let spindle = try await runSpindleProcess(["qemu-io"] + arguments + [Self.url(mineServer)])
    let qemu = try await runProcess("qemu-io", arguments + [Self.url(theirsServer)])
    #expect(spindle.masked() == qemu.masked())
    _ = await mineServer.terminate()
    _ = await theirsServer.terminate()
    let same = try await runProcess(
      "qemu-img", ["compare", "-f", "raw", "-F", "raw", mine, theirs])
    #expect(same.status == 0, "\(same)")
  }

  /// A qcow2 overlay whose backing file is an NBD URL.
  @Test func overlayOnAnNBDBackingFile() async throws {
    let fixture = try ImageFixture()
    let server = try await Self.qemuNBD(fixture, try await Self.image(fixture))
    var results: [ToolResult] = []
    for tool in ["spindle", "qemu"] {
      let overlay = fixture.path("\(tool).qcow2")
      try await qemuImg([
        "create", "-q", "-f", "qcow2", "-b", Self.url(server), "-F", "raw", overlay,
      ])
      let script = [
        "-c", "read -P 0xab 0 1M", "-c", "write -P 0x77 0 4k", "-c", "read -P 0x5c 5M 4k",
        "-c", "read -P 0x77 0 4k", "-c", "map",
      ]
      results.append(
        tool == "spindle"
          ? try await runSpindleProcess(["qemu-io"] + script + [overlay])
          : try await runProcess("qemu-io", script + [overlay]))
      #expect(results.last?.status == 0, "\(results.last!)")
    }
    #expect(results[0].masked() == results[1].masked())
    try await compareImg(["info", "--backing-chain", fixture.path("qemu.qcow2")])
    _ = await server.terminate()
  }

  @Test func errorsMatchQEMU() async throws {
    let fixture = try ImageFixture()
    let server = try await Self.qemuNBD(
      fixture, try await Self.image(fixture), options: ["-t", "-x", "exp"])
    let readOnly = try await Self.qemuNBD(
      fixture, fixture.path("a.raw"), name: "r.sock", options: ["-t", "-r"])
    for name in [
      Self.url(server, export: "nope"), "nbd+unix:///?socket=\(fixture.path("none.sock"))",
      "nbd:unix:\(fixture.path("none.sock")):exportname=e", "nbd://", "nbd+unix:///x",
      "nbd+unix://h/x?socket=/s", "nbd+unix:///x?socket=/s&foo=1", "nbd://h/x?socket=/s",
      "nbd:foo", "nbd:", "nbd:localhost", "nbd://:1/", "nbd://localhost:99999/",
      #"json:{"driver":"nbd"}"#, #"json:{"driver":"nbd","server":{"type":"unix"}}"#,
      #"json:{"driver":"nbd","path":"/p","host":"h"}"#,
      #"json:{"driver":"nbd","server":{"type":"bogus"}}"#,
    ] {
      try await compareImg(["info", name])
    }
    // Writing to a read-only export: the open fails as in QEMU.
    let arguments = ["-c", "write 0 512", Self.url(readOnly)]
    let spindle = try await runSpindleProcess(["qemu-io"] + arguments)
    let qemu = try await runProcess("qemu-io", arguments)
    #expect(spindle == qemu)
    _ = await server.terminate()
    _ = await readOnly.terminate()
  }
}

/// The client against nbdkit: its error filter injects EIO, its delay
/// filter makes replies come out of order.
@Suite(.requires("nbdkit", "qemu-io"))
struct NBDClientNbdkitTests {
  static func nbdkit(_ fixture: ImageFixture, _ arguments: [String]) async throws
    -> BackgroundNBDServer
  {
    let socket = fixture.path("k.sock")
    let path = try #require(ToolLocator.path(of: "nbdkit"))
    return try await BackgroundNBDServer(
      command: [path, "-f", "-U", socket] + arguments, socket: socket)
  }

  @Test func memoryPluginReadWriteMatchesQEMU() async throws {
    let fixture = try ImageFixture()
    let server = try await Self.nbdkit(fixture, ["memory", "16M"])
    let url = "nbd+unix:///?socket=\(server.socket)"
    let script = [
      "-c", "write -P 0x5a 0 64k", "-c", "write -z 64k 64k", "-c", "discard 0 4k", "-c",
      "read -P 0x5a 4k 60k", "-c", "map", "-c", "flush",
    ]
    let spindle = try await runSpindleProcess(["qemu-io", "-f", "raw"] + script + [url])
    let qemu = try await runProcess("qemu-io", ["-f", "raw"] + script + [url])
    #expect(spindle.masked() == qemu.masked())
    _ = await server.terminate()
  }

  /// The requests each client sends for the same script, as nbdkit's log
  /// filter records them (flags included: FUA, NO_HOLE as `trim=0`,
  /// FAST_ZERO, REQ_ONE), up to the client's close (Spindle's close sends
  /// one more FLUSH than QEMU's: docs/nbd.md).
  @Test func requestsMatchQEMUs() async throws {
    let fixture = try ImageFixture()
    let script = [
      "-c", "write -P 1 0 64k", "-c", "write -z 64k 64k", "-c", "write -z -u 128k 64k",
      "-c", "write -P 2 -f 256k 4k", "-c", "write -z -n 512k 64k", "-c", "discard 0 4k", "-c",
      "flush", "-c", "read 0 8k",
      "-c", "map",
    ]
    var logs: [[String]] = []
    for tool in ["spindle", "qemu"] {
      let log = fixture.path("\(tool).log")
      let server = try await Self.nbdkit(
        fixture, ["--filter=log", "memory", "16M", "logfile=\(log)"])
      let url = "nbd+unix:///?socket=\(server.socket)"
      let result =
        tool == "spindle"
        ? try await runSpindleProcess(["qemu-io", "-f", "raw"] + script + [url])
        : try await runProcess("qemu-io", ["-f", "raw"] + script + [url])
      #expect(result.status == 0, "\(result)")
      _ = await server.terminate()
      let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
      // Drop the timestamps; keep what the client asked for until its last
      // block status query.
      var requests = lines.map { $0.split(separator: " ").dropFirst(2).joined(separator: " ") }
        .filter { $0.hasPrefix("connection=") }
      if let last = requests.lastIndex(where: { $0.contains("...Extents") }) {
        requests = Array(requests[...last])
      }
      logs.append(requests)
      unlink(server.socket)
    }
    #expect(logs[0] == logs[1])
    #expect(logs[0].contains { $0.contains("Zero") && $0.contains("trim=0 fua=1 fast=0") })
    #expect(logs[0].contains { $0.contains("Zero") && $0.contains("fast=1") })
    #expect(logs[0].contains { $0.contains("Write") && $0.contains("fua=1") })
  }

  /// Older servers: oldstyle (no options), newstyle without the fixed bit
  /// (EXPORT_NAME only), no structured replies (simple replies, no block
  /// status).
  @Test(arguments: [["--oldstyle"], ["--mask-handshake=0"], ["--no-sr"]])
  func olderServersMatchQEMU(_ flags: [String]) async throws {
    let fixture = try ImageFixture()
    let server = try await Self.nbdkit(fixture, flags + ["memory", "16M"])
    let url = "nbd+unix:///?socket=\(server.socket)"
    let script = [
      "-c", "write -P 0x5a 0 64k", "-c", "write -z 64k 64k", "-c", "read -P 0x5a 4k 60k",
      "-c", "read -P 0 64k 64k", "-c", "map", "-c", "flush",
    ]
    let spindle = try await runSpindleProcess(["qemu-io", "-f", "raw"] + script + [url])
    let qemu = try await runProcess("qemu-io", ["-f", "raw"] + script + [url])
    // (Over nbdkit's oldstyle both clients' writes and flushes fail alike.)
    #expect(qemu.output.contains("bytes at offset"), "\(qemu)")
    #expect(spindle.masked() == qemu.masked())
    _ = await server.terminate()
  }

  @Test func injectedErrorsMatchQEMU() async throws {
    let fixture = try ImageFixture()
    let server = try await Self.nbdkit(
      fixture,
      [
        "--filter=error", "memory", "16M", "error-pread=EIO", "error-pread-rate=1",
        "error-pwrite=ENOSPC", "error-pwrite-rate=1",
      ])
    let url = "nbd+unix:///?socket=\(server.socket)"
    let script = ["-c", "read 0 512", "-c", "write 0 512", "-c", "write -z 0 512"]
    let spindle = try await runSpindleProcess(["qemu-io", "-f", "raw"] + script + [url])
    let qemu = try await runProcess("qemu-io", ["-f", "raw"] + script + [url])
    #expect(spindle.masked() == qemu.masked())
    #expect(spindle.output.contains("read failed: Input/output error"))
    _ = await server.terminate()
  }

  /// Reads held back by the server (delay filter) answer after a write sent
  /// later: replies are matched by cookie, not by order. (In a full test run
  /// the block layer's thread can be busy for longer than the delay, and the
  /// write then ends after the read: that order is a known, intermittent
  /// issue of the run, not of the client. A longer delay does not serve:
  /// nbdkit then fails the held read with ESHUTDOWN after 5 s, not yet
  /// understood.)
  @BlockActor
  @Test func repliesOutOfOrderAreMatchedByCookie() async throws {
    let fixture = try ImageFixture()
    let server = try await Self.nbdkit(fixture, ["--filter=delay", "memory", "16M", "rdelay=2"])
    NBDClient.register()
    let node = try await ImageOpener.open(
      filename: "nbd+unix:///?socket=\(server.socket)", format: "nbd")
    var order: [String] = []
    let read = Task { @BlockActor in
      _ = try await node.read(at: 0, count: 4096)
      order.append("read")
    }
    // Let the read go out first.
    await Task.yield()
    try await node.write(at: 8192, bytes: [UInt8](repeating: 7, count: 4096))
    order.append("write")
    try await read.value
    withKnownIssue("the block layer's thread busier than the delay", isIntermittent: true) {
      #expect(order == ["write", "read"])
    }
    #expect(try await node.read(at: 8192, count: 4096) == [UInt8](repeating: 7, count: 4096))
    await node.close()
    _ = await server.terminate()
  }
}

/// `reconnect-delay` and `open-timeout` (QEMU 7.2's semantics) against an
/// nbdkit that is killed and started again on the same socket.
@Suite(.requires("nbdkit"))
@BlockActor
struct NBDClientReconnectTests {
  static func nbdkit(_ socket: String) async throws -> BackgroundNBDServer {
    let path = try #require(ToolLocator.path(of: "nbdkit"))
    return try await BackgroundNBDServer(
      command: [path, "-f", "-U", socket, "memory", "16M"], socket: socket)
  }

  /// Kills the server and removes its socket (nbdkit cannot unlink it
  /// after SIGKILL).
  static func kill(_ server: BackgroundNBDServer) async {
    server.process.send(SIGKILL)
    _ = await server.waitForExit()
    unlink(server.socket)
  }

  func open(_ socket: String, _ options: [String: String]) async throws -> BlockNode {
    NBDClient.register()
    var all = DriverOptions(options)
    all["driver"] = "nbd"
    all["server.type"] = "unix"
    all["server.path"] = socket
    return try await ImageOpener.open(filename: nil, options: all)
  }

  @Test func requestsWaitForTheNewConnectionWithinTheDelay() async throws {
    let fixture = try ImageFixture()
    let socket = fixture.path("k.sock")
    let first = try await Self.nbdkit(socket)
    let node = try await open(socket, ["reconnect-delay": "60"])
    try await node.write(at: 0, bytes: [1, 2, 3, 4])
    await Self.kill(first)
    let second = try await Self.nbdkit(socket)
    // A fresh memory export: the read reaches the new server.
    #expect(try await node.read(at: 0, count: 4) == [0, 0, 0, 0])
    try await node.write(at: 512, bytes: [9])
    #expect(try await node.read(at: 512, count: 1) == [9])
    await node.close()
    _ = await second.terminate()
  }

  /// Without a delay a request on a broken connection fails at once (no
  /// server comes back here: the background reconnect could otherwise win).
  @Test func withoutDelayRequestsFailAtOnce() async throws {
    let fixture = try ImageFixture()
    let socket = fixture.path("k.sock")
    let first = try await Self.nbdkit(socket)
    let node = try await open(socket, [:])
    #expect(try await node.read(at: 0, count: 4) == [0, 0, 0, 0])
    await Self.kill(first)
    await #expect(throws: BlockError(.ioError)) { _ = try await node.read(at: 0, count: 4) }
    await node.close()
  }

  @Test func openTimeoutWaitsForTheServer() async throws {
    let fixture = try ImageFixture()
    let socket = fixture.path("k.sock")
    await #expect(throws: BlockError.self) { _ = try await open(socket, [:]) }
    let opening = Task { @BlockActor in try await open(socket, ["open-timeout": "60"]) }
    let server = try await Self.nbdkit(socket)
    let node = try await opening.value
    #expect(node.length == 16 << 20)
    await node.close()
    _ = await server.terminate()
  }
}

/// A server that never hangs up (a Python oldstyle server that keeps every
/// connection open): closing the node still ends, after the grace period.
@Suite(.requires("python3"))
@BlockActor
struct NBDClientUnresponsiveServerTests {
  static let server = """
    import socket, struct, sys
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sys.argv[1])
    listener.listen(8)
    held = []
    while True:
        connection, _ = listener.accept()
        try:
            connection.sendall(b"NBDMAGIC" + struct.pack(">QQI", 0x00420281861253, 1 << 20, 1)
                               + bytes(124))
            held.append(connection)
        except OSError:
            pass
    """

  @Test(.timeLimit(.minutes(5))) func closeEndsWhenTheServerNeverHangsUp() async throws {
    let fixture = try ImageFixture()
    let socket = fixture.path("p.sock")
    let python = try #require(ToolLocator.path(of: "python3"))
    let server = try await BackgroundNBDServer(
      command: [python, "-c", Self.server, socket], socket: socket)
    NBDClient.register()
    let node = try await ImageOpener.open(
      filename: "nbd+unix:///?socket=\(socket)", format: "nbd")
    #expect(node.length == 1 << 20)
    await node.close()
    _ = await server.terminate()
  }
}
