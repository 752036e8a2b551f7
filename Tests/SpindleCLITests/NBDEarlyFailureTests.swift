import BlockTestSupport
import Foundation
import Testing

/// A server whose image fails to open (or whose snapshot fails to load)
/// while a client already waits on its socket: qemu-nbd's message, status 1,
/// and the waiting client reset by the kernel (it was never accepted).
/// Socket activation makes the order certain: the client connects to the
/// listening socket before the server process even starts.
@Suite(
  .requires("qemu-nbd", "qemu-img", "python3"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct NBDEarlyFailureTests {
  /// Listens on argv[1], connects a client, starts the server (argv[2...])
  /// with the socket on fd 3 (LISTEN_PID/LISTEN_FDS), waits for it, then
  /// prints its status and what the client saw.
  static let launcher = """
    import os, socket, sys
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sys.argv[1])
    listener.listen(1)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(sys.argv[1])
    pid = os.fork()
    if pid == 0:
        os.dup2(listener.fileno(), 3)
        os.set_inheritable(3, True)
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDS"] = "1"
        os.execv(sys.argv[2], sys.argv[2:])
    listener.close()
    _, status = os.waitpid(pid, 0)
    client.settimeout(30)
    try:
        seen = "data" if client.recv(1) else "end of file"
    except ConnectionResetError:
        seen = "reset"
    print("status", os.waitstatus_to_exitcode(status), "client", seen)
    """

  @Test(arguments: [["-f", "qcow2", "DIR/missing.qcow2"], ["-f", "qcow2", "-l", "nosnap", "IMG"]])
  func failureWithClientWaiting(_ template: [String]) async throws {
    let fixture = try ImageFixture()
    let image = fixture.path("a.qcow2")
    let created = try await runProcess("qemu-img", ["create", "-q", "-f", "qcow2", image, "1M"])
    try #require(created.status == 0, "\(created)")
    let options = template.map {
      $0 == "IMG" ? image : $0.replacingOccurrences(of: "DIR", with: fixture.directory.path)
    }
    let python = try #require(ToolLocator.path(of: "python3"))
    var results: [ToolResult] = []
    for server in NBDServer.allCases {
      let socket = fixture.path("\(server).sock")
      let run = try await ChildProcess.run(
        "/usr/bin/timeout",
        ["-k", "10", "120", python, "-c", Self.launcher, socket] + server.command + options,
        defaultSignals: true)
      results.append(
        ToolResult(status: run.termination.status, output: run.output, error: run.error))
    }
    #expect(results[1].output == "status 1 client reset\n", "qemu-nbd: \(results[1])")
    #expect(results[0] == results[1])
  }
}
