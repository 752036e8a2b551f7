import BlockTestSupport
import Foundation
import Testing

/// `spindle serve` against the real qemu-nbd 7.2, both driven by libnbd's
/// tools (socket activation: `nbdinfo -- [ SERVER ... ]`) on identical images;
/// the outputs must be the same.
@Suite(
  .requires("qemu-nbd", "qemu-img", "qemu-io", "nbdinfo", "nbdcopy"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct NBDInteropTests {
  /// A 64 MiB qcow2 with 1 MiB of data, a zero cluster run at 4 MiB and data
  /// at 9 MiB; and the same content as a sparse raw file.
  static func images(_ fixture: ImageFixture) async throws -> (qcow2: String, raw: String) {
    let qcow2 = fixture.path("a.qcow2")
    let raw = fixture.path("a.raw")
    for arguments in [
      ["create", "-q", "-f", "qcow2", qcow2, "64M"]
    ] {
      let result = try await runProcess("qemu-img", arguments)
      try #require(result.status == 0, "\(result)")
    }
    let written = try await runProcess(
      "qemu-io",
      [
        "-f", "qcow2", "-c", "write -P 0xab 0 1M", "-c", "write -z 4M 1M", "-c",
        "write -P 0x5c 9M 192k", qcow2,
      ])
    try #require(written.status == 0, "\(written)")
    let converted = try await runProcess(
      "qemu-img", ["convert", "-f", "qcow2", "-O", "raw", qcow2, raw])
    try #require(converted.status == 0, "\(converted)")
    return (qcow2, raw)
  }

  /// Runs `client` with `arguments` then the activated server with `options`,
  /// for both servers.
  func compare(
    _ client: String, _ arguments: [String], options: [String], statuses: Set<Int32> = [0]
  ) async throws {
    let spindle = try await runNBDClient(client, arguments + NBDServer.spindle.activated(options))
    let qemu = try await runNBDClient(client, arguments + NBDServer.qemu.activated(options))
    #expect(statuses.contains(qemu.status), "\(qemu)")
    #expect(spindle == qemu, "options \(options)")
  }

  @Test(arguments: [
    ["-f", "qcow2"], ["-f", "qcow2", "-r"], ["-f", "raw", "-e", "0"],
    ["-f", "qcow2", "-D", "words"],
    ["--cache=writethrough", "--discard=unmap", "--detect-zeroes=unmap", "-f", "qcow2"],
  ])
  func nbdinfoJSON(_ options: [String]) async throws {
    let fixture = try ImageFixture()
    let (qcow2, raw) = try await Self.images(fixture)
    let image = options.contains("raw") ? raw : qcow2
    try await compare("nbdinfo", ["--json"], options: options + [image])
  }

  /// A raw image opened without `-f`: probing guards block 0, so the
  /// minimum block size a client that asks gets is 512.
  @Test func nbdinfoJSONOfProbedRaw() async throws {
    let fixture = try ImageFixture()
    let (_, raw) = try await Self.images(fixture)
    try await compare("nbdinfo", ["--json"], options: [raw])
  }

  @Test(arguments: ["qcow2", "raw"])
  func nbdinfoMap(_ format: String) async throws {
    let fixture = try ImageFixture()
    let (qcow2, raw) = try await Self.images(fixture)
    let image = format == "raw" ? raw : qcow2
    try await compare("nbdinfo", ["--map"], options: ["-f", format, image])
    try await compare("nbdinfo", ["--map", "--totals"], options: ["-f", format, image])
  }

  @Test(arguments: [["-f", "qcow2"], ["-f", "qcow2", "-r"], ["-f", "qcow2", "-e", "2"]])
  func nbdinfoCan(_ options: [String]) async throws {
    let fixture = try ImageFixture()
    let (qcow2, _) = try await Self.images(fixture)
    for question in [
      "--can=multi-conn", "--can=flush", "--can=fua", "--can=trim", "--can=zero",
      "--can=fast-zero", "--can=df", "--can=cache", "--can=structured-reply", "--is=read-only",
    ] {
      // nbdinfo --can/--is: status 0 = yes, 2 = no.
      try await compare("nbdinfo", [question], options: options + [qcow2], statuses: [0, 2])
    }
  }

  @Test func nbdinfoList() async throws {
    let fixture = try ImageFixture()
    let (qcow2, _) = try await Self.images(fixture)
    try await compare(
      "nbdinfo", ["--list"],
      options: ["-f", "qcow2", "-x", "exported", "-D", "a description", qcow2])
  }

  /// nbdcopy from each server (with and without extents) gives the image's
  /// bytes, as qemu-img convert writes them.
  @Test(arguments: [[], ["--no-extents"]])
  func nbdcopyFromServer(_ flags: [String]) async throws {
    let fixture = try ImageFixture()
    let (qcow2, raw) = try await Self.images(fixture)
    let expected = try Data(contentsOf: URL(fileURLWithPath: raw))
    for server in NBDServer.allCases {
      let out = fixture.path("out-\(server).raw")
      let result = try await runNBDClient(
        "nbdcopy", flags + server.activated(["-f", "qcow2", "-r", qcow2]) + [out])
      #expect(result.status == 0, "\(server): \(result)")
      #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == expected, "\(server)")
    }
  }

  /// nbdcopy into a served empty qcow2, then qemu-img compares it with the
  /// source.
  @Test func nbdcopyToServer() async throws {
    let fixture = try ImageFixture()
    let (_, raw) = try await Self.images(fixture)
    for server in NBDServer.allCases {
      let target = fixture.path("target-\(server).qcow2")
      let created = try await runProcess(
        "qemu-img", ["create", "-q", "-f", "qcow2", target, "64M"])
      try #require(created.status == 0)
      let copied = try await runNBDClient(
        "nbdcopy", [raw] + server.activated(["-f", "qcow2", target]))
      #expect(copied.status == 0, "\(server): \(copied)")
      let compared = try await runProcess("qemu-img", ["compare", raw, target])
      #expect(compared.status == 0, "\(server): \(compared)")
    }
  }

  /// qemu-io writes, zeroes, discards and reads through a Unix socket (-k,
  /// `-t`), qemu-img compares over NBD, then SIGTERM ends the server with
  /// status 0 and the socket unlinked; same transcripts as with qemu-nbd.
  @Test func qemuIOAndCompareOverUnixSocket() async throws {
    let fixture = try ImageFixture()
    let (qcow2, raw) = try await Self.images(fixture)
    var transcripts: [NBDServer: [ToolResult]] = [:]
    for server in NBDServer.allCases {
      let image = fixture.path("served-\(server).qcow2")
      try FileManager.default.copyItem(atPath: qcow2, toPath: image)
      let socket = fixture.path("\(server).sock")
      let running = try await BackgroundNBDServer(
        server, socket: socket, options: ["-t", "-f", "qcow2", "--discard=unmap", image])
      let uri = "nbd+unix:///?socket=\(socket)"
      var results: [ToolResult] = []
      results.append(
        try await runNBDClient(
          "qemu-io",
          [
            "-f", "raw", "-c", "write -P 0x11 512 4k", "-c", "read -P 0x11 512 4k", "-c",
            "write -z 9M 64k", "-c", "discard 2M 64k", "-c", "write -z -u 4M 64k", "-c",
            "read -P 0 9M 64k", "-c", "aio_write -P 0x33 33M 64k", "-c", "aio_flush", "-c",
            "read -P 0x33 33M 64k", "-c", "flush", uri,
          ]
        ).masked())
      results.append(try await runNBDClient("qemu-img", ["compare", uri, qcow2]))
      results.append(try await runNBDClient("qemu-img", ["map", "--output=json", uri]))
      let termination = await running.terminate()
      #expect(termination.status == 0 && !termination.signaled, "\(server)")
      #expect(!FileManager.default.fileExists(atPath: socket), "\(server)")
      transcripts[server] = results.map { $0.masked(replacing: socket) }
      let compared = try await runProcess("qemu-img", ["compare", "-f", "qcow2", image, raw])
      #expect(compared.status == 1, "\(server): the writes changed the image")
    }
    #expect(transcripts[.spindle] == transcripts[.qemu])
    #expect(transcripts[.qemu]?.first?.status == 0)
  }

  /// Without `-t` the server ends once its negotiated client leaves; a
  /// client that only lists does not end it.
  @Test func nonPersistentServerEndsAfterLastClient() async throws {
    let fixture = try ImageFixture()
    let (qcow2, _) = try await Self.images(fixture)
    let socket = fixture.path("s.sock")
    let running = try await BackgroundNBDServer(
      .spindle, socket: socket, options: ["-f", "qcow2", qcow2])
    let uri = "nbd+unix:///?socket=\(socket)"
    let listed = try await runNBDClient("nbdinfo", ["--list", uri])
    #expect(listed.status == 0, "\(listed)")
    let size = try await runNBDClient("nbdinfo", ["--size", uri])
    #expect(size == ToolResult(status: 0, output: "67108864\n", error: ""))
    let termination = await running.waitForExit()
    #expect(termination.status == 0 && !termination.signaled)
    #expect(!FileManager.default.fileExists(atPath: socket))
  }

  /// TCP on 127.0.0.1 (-b, -p): nbdinfo sees the same export from both
  /// servers, and nbdcopy reads the image's bytes back.
  @Test func tcpOnLoopback() async throws {
    let fixture = try ImageFixture()
    let (qcow2, raw) = try await Self.images(fixture)
    var outputs: [ToolResult] = []
    for server in NBDServer.allCases {
      let port = try NBDSocket.freePort()
      let running = try await BackgroundNBDServer(
        server, port: port, options: ["-t", "-f", "qcow2", "-r", qcow2])
      let uri = "nbd://127.0.0.1:\(port)"
      outputs.append(try await runNBDClient("nbdinfo", ["--json", uri]).masked(replacing: uri))
      let out = fixture.path("tcp-\(server).raw")
      let copied = try await runNBDClient("nbdcopy", [uri, out])
      #expect(copied.status == 0, "\(server): \(copied)")
      #expect(
        try Data(contentsOf: URL(fileURLWithPath: out))
          == Data(contentsOf: URL(fileURLWithPath: raw)))
      let termination = await running.terminate()
      #expect(termination.status == 0 && !termination.signaled, "\(server)")
    }
    #expect(outputs[0] == outputs[1])
    #expect(outputs[1].status == 0)
  }

  /// `--image-opts`: the image named by an option string.
  @Test func nbdinfoJSONWithImageOpts() async throws {
    let fixture = try ImageFixture()
    let (qcow2, _) = try await Self.images(fixture)
    try await compare(
      "nbdinfo", ["--json"], options: ["--image-opts", "driver=qcow2,file.filename=\(qcow2)"])
  }

  /// A read-only export (-r): qemu-io refuses to open it for writing, as
  /// with qemu-nbd; the non-persistent server then ends by itself.
  @Test func readOnlyExportIsOpenedReadOnly() async throws {
    let fixture = try ImageFixture()
    let (qcow2, _) = try await Self.images(fixture)
    var results: [ToolResult] = []
    for server in NBDServer.allCases {
      let socket = fixture.path("\(server).sock")
      let running = try await BackgroundNBDServer(
        server, socket: socket, options: ["-r", "-f", "qcow2", qcow2])
      let result = try await runNBDClient(
        "qemu-io",
        [
          "-f", "raw", "-c", "write -P 1 0 512", "-c", "write -z 0 64k", "-c", "discard 0 64k",
          "-c", "read -P 0xab 0 512", "nbd+unix:///?socket=\(socket)",
        ])
      results.append(result.masked(replacing: socket))
      let termination = await running.waitForExit()
      #expect(termination.status == 0 && !termination.signaled, "\(server)")
    }
    #expect(results[0] == results[1])
    #expect(results[1].error.contains("Could not open image: Permission denied"), "\(results[1])")
  }
}
