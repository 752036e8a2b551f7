import BlockTestSupport
import Foundation
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// NBD over TLS (X.509 and PSK) between Spindle and QEMU 7.2, each used as
/// the other's oracle: `spindle serve` and qemu-nbd as servers, qemu-img,
/// qemu-io, qemu-nbd -L and nbdinfo (libnbd) and Spindle's own client (a
/// child process through `qemu-img`/`qemu-io` links) as clients, with the
/// certificates of ``TLSTestPKI``.
@Suite(.requires("qemu-nbd", "qemu-img", "qemu-io", "nbdinfo", "openssl"))
struct NBDTLSInteropTests {
  /// A client of the NBD tools: QEMU's own or Spindle's (through links).
  enum Client: CaseIterable {
    case qemu, spindle

    func run(_ tool: String, _ arguments: [String]) async throws -> ToolResult {
      switch self {
      case .qemu: try await runProcess(tool, arguments)
      case .spindle: try await runSpindleProcess([tool] + arguments)
      }
    }
  }

  /// A 16 MiB raw image with 0xab in its first MiB.
  static func image(_ fixture: ImageFixture, _ name: String) async throws -> String {
    let path = fixture.path(name)
    try await qemuImg(["create", "-q", "-f", "raw", path, "16M"])
    let written = try await runProcess("qemu-io", ["-f", "raw", "-c", "write -P 0xab 0 1M", path])
    try #require(written.status == 0, "\(written)")
    return path
  }

  /// `server` with TLS credentials `creds` (an `--object` definition whose
  /// id is `tls0`), optionally `--tls-authz` for `identity`, persistent,
  /// serving a fresh copy of ``image(_:_:)``.
  static func serve(
    _ server: NBDServer, _ pki: TLSTestPKI, creds: String? = nil, identity: String? = nil
  ) async throws -> BackgroundNBDServer {
    let name = "\(server.rawValue)-\(UUID().uuidString.prefix(8))"
    let image = try await image(pki.fixture, "\(name).raw")
    var options = [
      "--object", creds ?? "tls-creds-x509,id=tls0,endpoint=server,dir=\(pki.server)",
      "--tls-creds", "tls0",
    ]
    if let identity {
      let escaped = identity.replacingOccurrences(of: ",", with: ",,")
      options += ["--object", "authz-simple,id=auth0,identity=\(escaped)", "--tls-authz", "auth0"]
    }
    return try await BackgroundNBDServer(
      server, socket: pki.fixture.path("\(name).sock"),
      options: options + ["-t", "-f", "raw", image])
  }

  /// `--object` and `--image-opts` arguments for an X.509 client with the
  /// certificates in `folder`.
  static func x509(
    _ folder: String, _ server: BackgroundNBDServer, hostname: String? = "localhost",
    extra: String = ""
  ) -> (object: [String], image: String) {
    (
      ["--object", "tls-creds-x509,id=tls0,endpoint=client,dir=\(folder)\(extra)"],
      "driver=nbd,server.type=unix,server.path=\(server.socket),tls-creds=tls0"
        + (hostname.map { ",tls-hostname=\($0)" } ?? "")
    )
  }

  /// The same for a PSK client `username` with `folder/keys.psk`.
  static func psk(_ folder: String, _ username: String, _ server: BackgroundNBDServer)
    -> (object: [String], image: String)
  {
    (
      ["--object", "tls-creds-psk,id=tls0,endpoint=client,dir=\(folder),username=\(username)"],
      "driver=nbd,server.type=unix,server.path=\(server.socket),tls-creds=tls0"
    )
  }

  /// `qemu-img info` through `client`, the socket path masked.
  static func info(
    _ client: Client, _ target: (object: [String], image: String), _ server: BackgroundNBDServer
  ) async throws -> ToolResult {
    let result = try await client.run(
      "qemu-img", ["info"] + target.object + ["--image-opts", target.image])
    return result.masked(replacing: server.socket)
  }

  /// `qemu-io -c ...` through `client`.
  static func io(
    _ client: Client, _ target: (object: [String], image: String), _ commands: [String]
  ) async throws -> ToolResult {
    try await client.run(
      "qemu-io",
      target.object + ["--image-opts"] + commands.flatMap { ["-c", $0] } + [target.image]
    ).masked()
  }

  /// What the server reported on standard error, once ended, as lines.
  /// Left out as NBDBadInputTests does: qemu-nbd's report of a client that
  /// leaves before its first option (`Failed to read opts magic: ...`, with
  /// or without TLS; Spindle never reports it) and of the greeting it could
  /// not write to, or the flags it could not read from, BackgroundNBDServer's
  /// readiness probe (`write failed`, `Failed to read flags`, when the
  /// probe's close wins the race).
  static func report(_ server: BackgroundNBDServer) async -> [String] {
    _ = await server.terminate()
    return await server.errorOutput().split(separator: "\n").map(String.init)
      .filter {
        !$0.contains("Failed to read opts magic") && !$0.contains("write failed")
          && !$0.contains("Failed to read flags")
      }
  }

  /// A client's result up to the reason its open failed: when the server
  /// refuses the client after a TLS 1.3 handshake the client considers done
  /// (no or a refused certificate, authz), QEMU's client sees the refusal
  /// in whichever read or write comes next, worded by the race (`Failed to
  /// send option request header: Cannot write to TLS channel: ...`,
  /// `Failed to read option reply: Cannot read from TLS channel: Software
  /// caused connection abort`, `...: Unexpected end-of-file ...`), against
  /// either server.
  static func opening(_ result: ToolResult) -> ToolResult {
    var result = result
    if let end = result.error.range(of: "': ") {
      result.error = String(result.error[..<end.upperBound])
    }
    return result
  }

  // MARK: - X.509 data paths

  /// Written through one client, read back (`read -P`) through the other,
  /// over each server; what was there before reads back too.
  @Test(arguments: NBDServer.allCases)
  func writtenThroughOneClientReadsBackThroughTheOther(_ server: NBDServer) async throws {
    let pki = try await TLSTestPKI.make()
    let running = try await Self.serve(server, pki)
    let target = Self.x509(pki.client, running)
    for (writer, reader, pattern) in [(Client.qemu, Client.spindle, 0x11), (.spindle, .qemu, 0x22)]
    {
      let offset = pattern << 16
      let written = try await Self.io(writer, target, ["write -P \(pattern) \(offset) 64k"])
      #expect(written.status == 0 && written.output.hasPrefix("wrote 65536/65536"), "\(written)")
      let read = try await Self.io(
        reader, target, ["read -P \(pattern) \(offset) 64k", "read -P 0xab 1044480 4k"])
      #expect(read.status == 0, "\(read)")
      #expect(!read.output.contains("Pattern verification failed"), "\(read)")
      #expect(read.output.components(separatedBy: "read ").count == 3, "\(read)")
    }
    #expect(await Self.report(running) == [])
  }

  /// `qemu-img info` over TLS: the same through both clients, on both
  /// servers.
  @Test func infoMatchesAcrossServersAndClients() async throws {
    let pki = try await TLSTestPKI.make()
    var results: [ToolResult] = []
    for server in NBDServer.allCases {
      let running = try await Self.serve(server, pki)
      for client in Client.allCases {
        results.append(try await Self.info(client, Self.x509(pki.client, running), running))
      }
      _ = await running.terminate()
    }
    #expect(results[0].status == 0 && results[0].output.contains("virtual size: 16 MiB"))
    for result in results.dropFirst() { #expect(result == results[0]) }
  }

  /// libnbd's view (`nbdinfo --json`, `nbds+unix` with the client's
  /// certificates): identical for both servers but for the socket path.
  @Test func nbdinfoSeesTheSameExport() async throws {
    let pki = try await TLSTestPKI.make()
    var outputs: [ToolResult] = []
    for server in NBDServer.allCases {
      let running = try await Self.serve(server, pki)
      let uri = "nbds+unix:///?socket=\(running.socket)&tls-certificates=\(pki.client)"
      outputs.append(
        try await runNBDClient("nbdinfo", ["--json", uri]).masked(replacing: running.socket))
      _ = await running.terminate()
    }
    #expect(outputs[0].status == 0 && outputs[0].output.contains(#""TLS": true"#), "\(outputs[0])")
    #expect(outputs[1] == outputs[0])
  }

  /// `-L` over TLS: `spindle serve -L` prints what `qemu-nbd -L` does, on
  /// each server.
  @Test(arguments: NBDServer.allCases)
  func listingOverTLSMatchesQemuNbd(_ server: NBDServer) async throws {
    let pki = try await TLSTestPKI.make()
    let running = try await Self.serve(server, pki)
    let arguments = [
      "-L", "-k", running.socket, "--object",
      "tls-creds-x509,id=tls0,endpoint=client,dir=\(pki.client)", "--tls-creds", "tls0",
      "--tls-hostname", "localhost",
    ]
    let qemu = try await runNBDClient("qemu-nbd", arguments)
    let spindle = try await ChildProcess.run(
      "/usr/bin/timeout", ["-k", "10", "120", SpindleExecutable.path!, "serve"] + arguments)
    #expect(qemu.status == 0 && qemu.output.contains("exports available: 1"), "\(qemu)")
    #expect(spindle.termination.status == qemu.status)
    #expect(spindle.output == qemu.output)
    #expect(spindle.error == qemu.error)
    #expect(await Self.report(running) == [])
  }

  // MARK: - Refusals

  /// The clients each server refuses, through QEMU's client: the same
  /// messages and status, and the same server reports.
  @Test func refusalsMatchBetweenServers() async throws {
    let pki = try await TLSTestPKI.make()
    var clients: [[ToolResult]] = []
    var reports: [[String]] = []
    for server in NBDServer.allCases {
      let running = try await Self.serve(server, pki)
      clients.append([
        try await runProcess("qemu-img", ["info", "nbd+unix:///?socket=\(running.socket)"])
          .masked(replacing: running.socket),
        try await Self.info(.qemu, Self.x509(pki.client, running, hostname: "other"), running),
        try await Self.info(.qemu, Self.x509(pki.client, running, hostname: nil), running),
        try await Self.info(.qemu, Self.x509(pki.nocert, running), running),
      ])
      reports.append(await Self.report(running))
    }
    #expect(clients[0].allSatisfy { $0.status == 1 }, "\(clients[0])")
    #expect(clients[0][0].error.contains("Did you forget a valid tls-creds?"))
    #expect(clients[0][1].error.contains("Certificate does not match the hostname other"))
    #expect(clients[0][2].error.contains("No hostname for certificate validation"))
    #expect(Array(clients[1].prefix(3)) == Array(clients[0].prefix(3)))
    #expect(Self.opening(clients[1][3]) == Self.opening(clients[0][3]))
    #expect(
      reports[0] == [
        "qemu-nbd: option negotiation failed: Verify failed: No certificate was found."
      ])
    #expect(reports[1] == reports[0])
  }

  /// A client certificate signed by a CA the server does not trust (the
  /// client's own sanity check off) is refused by both servers with the
  /// same status and (up to the racy reason: ``opening(_:)``) the same client
  /// message. The server reports differ: qemu-nbd (GnuTLS)
  /// names its trusted CA in the CertificateRequest, so QEMU's client sends
  /// no certificate ("No certificate was found."); Spindle's server sends no
  /// CA names (swift-nio-ssl's `sendCANameList` is off), the client sends
  /// its certificate and Spindle reports the failed verification instead.
  @Test func untrustedClientCertificateIsRefused() async throws {
    let pki = try await TLSTestPKI.make()
    var clients: [ToolResult] = []
    var reports: [[String]] = []
    for server in NBDServer.allCases {
      let running = try await Self.serve(server, pki)
      let target = Self.x509(pki.untrusted, running, extra: ",sanity-check=off")
      clients.append(try await Self.info(.qemu, target, running))
      reports.append(await Self.report(running))
    }
    #expect(clients[0].status == 1, "\(clients[0])")
    #expect(Self.opening(clients[1]) == Self.opening(clients[0]))
    #expect(
      reports[1] == [
        "qemu-nbd: option negotiation failed: Verify failed: No certificate was found."
      ])
    #expect(
      reports[0].count == 1 && reports[0].first?.contains("option negotiation failed") == true)
    #expect(reports[0] == reports[1])
  }

  /// `--tls-authz` with an `authz-simple` identity: the client certificate's
  /// subject lets it in; another identity refuses it, reported alike.
  @Test func authzIdentityDecidesAlike() async throws {
    let pki = try await TLSTestPKI.make()
    for (identity, accepted) in [
      (TLSTestPKI.clientSubject, true), ("C=GB,O=Example Org,CN=desktop.example.com", false),
    ] {
      var clients: [ToolResult] = []
      var reports: [[String]] = []
      for server in NBDServer.allCases {
        let running = try await Self.serve(server, pki, identity: identity)
        clients.append(try await Self.info(.qemu, Self.x509(pki.client, running), running))
        reports.append(await Self.report(running))
      }
      #expect(clients[0].status == (accepted ? 0 : 1), "\(identity): \(clients[0])")
      #expect(
        accepted ? clients[1] == clients[0] : Self.opening(clients[1]) == Self.opening(clients[0]),
        "\(identity)")
      #expect(
        reports[0]
          == (accepted
            ? []
            : [
              "qemu-nbd: option negotiation failed: TLS x509 authz check for "
                + "\(TLSTestPKI.clientSubject) is denied"
            ]))
      #expect(reports[1] == reports[0], "\(identity)")
    }
  }

  /// Spindle's client against qemu-nbd, failing as QEMU's client does on the
  /// same server where the messages are QEMU's own. Where the TLS libraries
  /// word it (no client certificate, untrusted certificate: GnuTLS's
  /// "Cannot write to TLS channel" against swift-nio-ssl's "I/O on closed
  /// channel"), Spindle's client still fails the open with status 1.
  @Test func clientFailuresMatchQEMUsClient() async throws {
    let pki = try await TLSTestPKI.make()
    let running = try await Self.serve(.qemu, pki)
    for target in [
      Self.x509(pki.client, running, hostname: "other"),
      Self.x509(pki.client, running, hostname: nil),
      // Addresses are checked against the certificate's IP entries (it
      // names 127.0.0.1), not against the socket (a Unix socket here).
      Self.x509(pki.client, running, hostname: "127.0.0.2"),
      Self.x509(pki.client, running, hostname: "::1"),
    ] {
      let qemu = try await Self.info(.qemu, target, running)
      let spindle = try await Self.info(.spindle, target, running)
      #expect(qemu.status == 1, "\(qemu)")
      #expect(spindle == qemu)
    }
    let address = Self.x509(pki.client, running, hostname: "127.0.0.1")
    let qemuByAddress = try await Self.info(.qemu, address, running)
    #expect(qemuByAddress.status == 0, "\(qemuByAddress)")
    #expect(try await Self.info(.spindle, address, running) == qemuByAddress)
    for target in [
      Self.x509(pki.nocert, running), Self.x509(pki.untrusted, running, extra: ",sanity-check=off"),
    ] {
      let spindle = try await Self.info(.spindle, target, running)
      #expect(spindle.status == 1, "\(spindle)")
      #expect(spindle.output.isEmpty)
      #expect(spindle.error.hasPrefix("qemu-img: Could not open 'driver=nbd,"), "\(spindle)")
    }
    // A client without TLS: Spindle's client asks for extended headers
    // first (option 11; QEMU 7.2 has none and asks for option 7, go), and
    // QEMU adds the hint "Did you forget a valid tls-creds?" to the error.
    let plain = ["info", "nbd+unix:///?socket=\(running.socket)"]
    let qemu = try await runProcess("qemu-img", plain)
    let spindle = try await runSpindleProcess(["qemu-img"] + plain)
    #expect(qemu.status == 1 && spindle.status == 1, "\(spindle)")
    #expect(spindle.error.contains("TLS negotiation required before option"), "\(spindle)")
    #expect(spindle.error.contains("not permitted before TLS"), "\(spindle)")
    #expect(spindle.error.contains("Did you forget a valid tls-creds?"), "\(spindle)")
    _ = await running.terminate()
  }

  // MARK: - PSK

  /// A PSK server (each of them) lets in `alice`, whose key it holds, and
  /// refuses `eve`, whom it does not know, with QEMU's client.
  @Test func pskServersMatch() async throws {
    let pki = try await TLSTestPKI.make()
    var alice: [ToolResult] = []
    var eve: [ToolResult] = []
    for server in NBDServer.allCases {
      let running = try await Self.serve(
        server, pki, creds: "tls-creds-psk,id=tls0,endpoint=server,dir=\(pki.psk)")
      alice.append(try await Self.info(.qemu, Self.psk(pki.psk, "alice", running), running))
      eve.append(try await Self.info(.qemu, Self.psk(pki.stranger, "eve", running), running))
      let report = await Self.report(running)
      // The handshake failure is worded by each TLS library (GnuTLS: "An
      // illegal parameter has been received.", BoringSSL: "psk identity
      // not found").
      #expect(report.count == 1, "\(server): \(report)")
      #expect(
        report.first?.hasPrefix("qemu-nbd: option negotiation failed: TLS handshake failed: ")
          == true)
    }
    #expect(alice[0].status == 0 && alice[0].output.contains("virtual size: 16 MiB"), "\(alice[0])")
    #expect(alice[1] == alice[0])
    #expect(eve[0].status == 1 && eve[1].status == 1, "\(eve)")
    #expect(eve.allSatisfy { $0.error.contains("TLS handshake failed") }, "\(eve)")
  }

  /// Spindle's PSK client against qemu-nbd: reads the data as alice, and
  /// fails as eve.
  @Test func spindlesPSKClientAgainstQemuNbd() async throws {
    let pki = try await TLSTestPKI.make()
    let running = try await Self.serve(
      .qemu, pki, creds: "tls-creds-psk,id=tls0,endpoint=server,dir=\(pki.psk)")
    let commands = ["read -P 0xab 0 64k", "write -P 0x5 2M 4k", "read -P 0x5 2M 4k"]
    let spindle = try await Self.io(.spindle, Self.psk(pki.psk, "alice", running), commands)
    let qemu = try await Self.io(.qemu, Self.psk(pki.psk, "bob", running), commands)
    #expect(qemu.status == 0 && !qemu.output.contains("verification failed"), "\(qemu)")
    #expect(spindle == qemu)
    let eve = try await Self.io(.spindle, Self.psk(pki.stranger, "eve", running), commands)
    #expect(eve.status == 1 && eve.output.isEmpty, "\(eve)")
    #expect(eve.error.contains("TLS handshake failed"), "\(eve)")
    _ = await running.terminate()
  }

  /// `--tls-authz` with PSK: alice, the identity, is let in by both. bob,
  /// whose key the server holds, is let in by qemu-nbd 7.2 (its
  /// `qcrypto_tls_session_check_credentials` does nothing for PSK: authz
  /// applies to X.509 subjects only) but refused by Spindle, which checks
  /// the PSK identity too (NBDTLSCredentials' `pskServerProvider`). A
  /// deliberate difference, pinned here.
  @Test func pskAuthzIdentity() async throws {
    let pki = try await TLSTestPKI.make()
    var alice: [ToolResult] = []
    var bob: [ToolResult] = []
    var reports: [[String]] = []
    for server in NBDServer.allCases {
      let running = try await Self.serve(
        server, pki, creds: "tls-creds-psk,id=tls0,endpoint=server,dir=\(pki.psk)",
        identity: "alice")
      alice.append(try await Self.info(.qemu, Self.psk(pki.psk, "alice", running), running))
      bob.append(try await Self.info(.qemu, Self.psk(pki.psk, "bob", running), running))
      reports.append(await Self.report(running))
    }
    #expect(alice[0].status == 0, "\(alice[0])")
    #expect(alice[1] == alice[0])
    // qemu-nbd (index 1) lets bob in; Spindle (index 0) refuses him.
    #expect(bob[1] == alice[1])
    #expect(reports[1] == [])
    #expect(bob[0].status == 1 && bob[0].error.contains("TLS handshake failed"), "\(bob[0])")
    #expect(
      reports[0] == [
        "qemu-nbd: option negotiation failed: TLS handshake failed: psk identity not found"
      ])
  }

  // MARK: - Robustness

  /// A client that asks for STARTTLS and then sends garbage instead of a
  /// ClientHello: the server reports a failed handshake and goes on serving
  /// (a good TLS client then gets in).
  @Test(arguments: NBDServer.allCases)
  func garbageAfterSTARTTLSLeavesTheServerUp(_ server: NBDServer) async throws {
    let pki = try await TLSTestPKI.make()
    let running = try await Self.serve(server, pki)
    let socket = try NBDSocket(path: running.socket)
    let greeting = try #require(await socket.receive(18))
    #expect(Array(greeting.prefix(16)) == Array("NBDMAGICIHAVEOPT".utf8))
    socket.send(.be(UInt32(3)))  // fixed newstyle, no zeroes
    socket.send(Array("IHAVEOPT".utf8) + .be(UInt32(5)) + .be(UInt32(0)))
    let reply = try #require(await socket.receive(20))
    #expect(reply.be(UInt64.self, at: 0) == 0x0003_e889_0455_65a9)
    #expect(reply.be(UInt32.self, at: 8) == 5)
    #expect(reply.be(UInt32.self, at: 12) == 1)  // ACK
    #expect(reply.be(UInt32.self, at: 16) == 0)
    socket.send(Array("GET / HTTP/1.0\r\n\r\n".utf8) + [UInt8](repeating: 0xff, count: 512))
    // The server hangs up (after an alert, or not).
    var outcome = await socket.outcome()
    while outcome == .data { outcome = await socket.outcome() }
    #expect(outcome == .endOfFile || outcome == .reset, "\(outcome)")
    socket.close()
    let info = try await Self.info(.qemu, Self.x509(pki.client, running), running)
    #expect(info.status == 0 && info.output.contains("virtual size: 16 MiB"), "\(info)")
    let report = await Self.report(running)
    #expect(report.count == 1, "\(report)")
    #expect(
      report.first?.hasPrefix("qemu-nbd: option negotiation failed: TLS handshake failed: ")
        == true, "\(report)")
  }

  // MARK: - Command line

  /// Credentials of the wrong kind or incomplete: the same message and
  /// status 1 as qemu-nbd (both invoked as `qemu-nbd`).
  @Test(arguments: [
    [
      "--object", "tls-creds-x509,id=tls0,endpoint=client,dir=CLIENT", "--tls-creds", "tls0", "IMG",
    ],
    [
      "-L", "-k", "DIR/none.sock", "--object", "tls-creds-x509,id=tls0,endpoint=server,dir=SERVER",
      "--tls-creds", "tls0",
    ],
    ["--object", "secret,id=tls0,data=x", "--tls-creds", "tls0", "IMG"],
    ["--object", "tls-creds-x509,id=tls0,endpoint=server,dir=NOKEY", "--tls-creds", "tls0", "IMG"],
    [
      "--object", "tls-creds-psk,id=tls0,endpoint=client,dir=PSK,username=alice", "--tls-creds",
      "tls0", "IMG",
    ],
  ])
  func commandLineErrorsMatchQemuNbd(_ template: [String]) async throws {
    let pki = try await TLSTestPKI.make()
    let image = try pki.fixture.makeImage("a.raw")
    let arguments = template.map {
      $0 == "IMG"
        ? image
        : $0.replacingOccurrences(of: "CLIENT", with: pki.client)
          .replacingOccurrences(of: "SERVER", with: pki.server)
          .replacingOccurrences(of: "NOKEY", with: pki.nokey)
          .replacingOccurrences(of: "PSK", with: pki.psk)
          .replacingOccurrences(of: "DIR", with: pki.fixture.directory.path)
    }
    let search = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin"
    let qemuPath = try #require(ToolLocator.path(of: "qemu-nbd"))
    let qemuDirectory = String(qemuPath[..<qemuPath.lastIndex(of: "/")!])
    let links = try SpindleExecutable.links()
    try FileManager.default.createSymbolicLink(
      atPath: links.path("qemu-nbd"), withDestinationPath: SpindleExecutable.path!)
    var results: [(termination: ChildProcess.Termination, output: String, error: String)] = []
    for directory in [qemuDirectory, links.directory.path] {
      results.append(
        try await ChildProcess.run(
          "/usr/bin/timeout",
          ["-k", "10", "120", "/usr/bin/env", "PATH=\(directory):\(search)", "qemu-nbd"]
            + arguments, defaultSignals: true))
    }
    let (qemu, spindle) = (results[0], results[1])
    #expect(qemu.termination.status == 1, "\(qemu)")
    #expect(qemu.error.hasPrefix("qemu-nbd: "), "\(qemu)")
    #expect(spindle.termination == qemu.termination)
    #expect(spindle.output == qemu.output)
    #expect(spindle.error == qemu.error)
  }
}
