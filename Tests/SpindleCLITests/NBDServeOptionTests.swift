import BlockTestSupport
import Foundation
import Testing

/// `spindle serve`'s command line against qemu-nbd 7.2's: the same messages
/// and exit codes for bad options.
@Suite(
  .requires("qemu-nbd", "qemu-img", "nbdinfo"),
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
    // -L's conflicts, and options given twice.
    ["-L", "IMG"], ["-L", "-x", "a"], ["-L", "-A"], ["-L", "--cache=none"], ["-L", "--fork"],
    ["-L", "-c", "/dev/nbd0"], ["--aio=threads", "--aio=threads", "IMG"],
    ["--discard=unmap", "--discard=unmap", "IMG"],
    // --selinux-label (Debian's qemu-nbd has SELinux; this kernel does not).
    ["--selinux-label=x", "IMG"], ["--selinux-label=x", "-k", "DIR/s.sock", "IMG"],
    // -T: Spindle knows no trace events, as qemu-nbd knows no such name.
    ["-T", "foo=bar", "IMG"], ["-T", "nbd_*,nbd_*", "IMG"],
    ["-T", "bogus_event", "-L", "-k", "DIR/none.sock"],
    ["-T", "events=DIR/nonexistent", "IMG"],
    ["-T", "file=DIR/nodir/x", "-L", "-k", "DIR/none.sock"],
    ["-T", "file=DIR/t.log", "IMG", "IMG"],
    // --object: secrets are defined, other types refused as qemu-nbd does.
    ["--object", "secret,id=s", "IMG"], ["--object", "bogus,id=x", "IMG"],
    ["--object", "secret,id=s,data=x", "--object", "secret,id=s,data=y", "IMG"],
    // TLS: the option checks, then the credentials as --object loads them
    // (this folder has no certificates or keys).
    ["--tls-authz", "a", "IMG"], ["--tls-hostname", "h", "IMG"], ["--tls-creds", "nope", "IMG"],
    ["-L", "--tls-creds", "nope", "--tls-authz", "a", "-k", "DIR/none.sock"],
    ["--tls-creds", "nope", "-c", "/dev/nbd0", "IMG"],
    ["--object", "tls-creds-x509,id=t,endpoint=server,dir=DIR", "--tls-creds", "t", "IMG"],
    ["--object", "tls-creds-psk,id=t,endpoint=server,dir=DIR/none", "IMG"],
    ["--object", "tls-creds-x509,id=t,endpoint=bogus,dir=DIR", "IMG"],
    ["--object", "tls-creds-x509,id=t,verify-peer=maybe,dir=DIR", "IMG"],
    ["--object", "tls-creds-x509,id=t", "IMG"], ["--object", "tls-creds-x509,id=t,bogus=1", "IMG"],
    ["--object", "authz-simple,id=a", "IMG"],
    ["--object", "secret,id=t,data=x", "--tls-creds", "t", "IMG"],
    ["--object", "authz-simple,id=t,identity=x", "--tls-creds", "t", "IMG"],
    // -c/-d: no /dev/nbd0 here; a regular file fails the first ioctl.
    ["-c", "/dev/nbd0", "-k", "DIR/s.sock", "IMG"],
    ["-v", "-c", "/dev/nbd0", "-k", "DIR/s.sock", "IMG"],
    ["-c", "IMG", "-k", "DIR/s.sock", "IMG"],
    ["-c", "/dev/nbd0", "-k", "DIR/s.sock", "DIR/missing"],
    ["-d", "/dev/nbd0"], ["-d"], ["-d", "DIR"],
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

  /// Successful ends without serving: `-d` on what is not an NBD device
  /// (QEMU's ioctls fail and are ignored), `-T help` (the list of trace
  /// events, which Spindle does not have: only the status is compared).
  @Test(arguments: [(["-d", "IMG"], true), (["-T", "help", "IMG"], false)])
  func endsWithoutServing(_ template: [String], _ sameOutput: Bool) async throws {
    let fixture = try ImageFixture()
    let image = try fixture.makeImage("a.raw")
    let arguments = template.map { $0 == "IMG" ? image : $0 }
    let qemu = try await runNBDClient("qemu-nbd", arguments)
    let spindle = try await ChildProcess.run(
      "/usr/bin/timeout", ["-k", "10", "120", SpindleExecutable.path!, "serve"] + arguments)
    #expect(qemu.status == 0 && qemu.error.isEmpty, "\(qemu)")
    #expect(spindle.termination.status == 0 && !spindle.termination.signaled)
    #expect(spindle.error == qemu.error)
    if sameOutput { #expect(spindle.output == qemu.output) }
  }

  /// What cannot go with socket activation, in qemu-nbd's order and words
  /// (the check precedes any use of fd 3, here /dev/null).
  @Test(arguments: [
    ["-b", "x", "IMG"], ["-c", "/dev/nbd0", "-k", "DIR/s.sock", "IMG"], ["-L"],
    ["--selinux-label=x", "IMG"], ["-p", "1", "IMG"], ["-k", "DIR/s.sock", "-p", "1", "IMG"],
  ])
  func socketActivationConflicts(_ template: [String]) async throws {
    let fixture = try ImageFixture()
    let image = try fixture.makeImage("a.raw")
    let arguments = template.map {
      $0 == "IMG" ? image : $0.replacingOccurrences(of: "DIR", with: fixture.directory.path)
    }
    var results: [ToolResult] = []
    for server in NBDServer.allCases {
      let result = try await ChildProcess.run(
        "/usr/bin/timeout",
        [
          "-k", "10", "120", "/bin/sh", "-c",
          "exec 3</dev/null; exec /usr/bin/env LISTEN_PID=$$ LISTEN_FDS=1 \"$@\"", "sh",
        ] + server.command + arguments)
      results.append(
        ToolResult(status: result.termination.status, output: result.output, error: result.error))
    }
    #expect(
      results[1].status == 1 && results[1].error.contains("socket activation"), "\(results[1])")
    #expect(results[0] == results[1])
  }

  /// -v prints nothing more while serving without a kernel device (the
  /// server started by nbdinfo on a socket-activation descriptor, its
  /// standard error nbdinfo's).
  @Test func verboseServingPrintsNothing() async throws {
    let fixture = try ImageFixture()
    let image = try fixture.makeImage("a.raw")
    for server in NBDServer.allCases {
      let size = try await runNBDClient(
        "nbdinfo", ["--size"] + server.activated(["-v", "-f", "raw", image]))
      #expect(size == ToolResult(status: 0, output: "1048576\n", error: ""), "\(server)")
    }
  }

  @Test func helpAndVersion() async throws {
    let help = await runSpindle(["qemu-nbd", "--help"])
    #expect(help.status == 0 && help.output.hasPrefix("Usage: qemu-nbd [OPTIONS] FILE\n"))
    let version = await runSpindle(["spindle", "serve", "-V"])
    #expect(version.status == 0 && version.output.hasPrefix("qemu-nbd 7.2"))
  }
}
