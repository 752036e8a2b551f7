import BlockTestSupport
import Foundation
import Testing

/// `qemu-nbd -L` and `spindle serve -L` against a scripted server that
/// answers the listing's options as told (well, with errors, with broken
/// replies): the same output, messages and status.
@Suite(
  .requires("qemu-nbd", "python3"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct NBDListFakeServerTests {
  /// A fixed-newstyle server on the Unix socket `argv[1]`; `argv[2]` names
  /// the scenario. It serves one connection after another.
  static let server = #"""
    import socket, struct, sys
    path, scenario = sys.argv[1], sys.argv[2]
    REP = 0x3e889045565a9
    def reply(c, opt, typ, data=b""):
        c.sendall(struct.pack(">QIII", REP, opt, typ, len(data)) + data)
    def readn(c, n):
        b = b""
        while len(b) < n:
            x = c.recv(n - len(b))
            if not x: return None
            b += x
        return b
    def serve(c):
        c.sendall(b"NBDMAGIC" + b"IHAVEOPT" + struct.pack(">H", 3))
        if readn(c, 4) is None: return
        while True:
            h = readn(c, 16)
            if h is None: return
            _, opt, ln = struct.unpack(">QII", h)
            data = readn(c, ln) if ln else b""
            if opt == 2: return
            if opt == 8:
                reply(c, 8, 0x80000001 if scenario == "nosr" else 1)
            elif opt == 3:
                if scenario == "policy": reply(c, 3, 0x80000002, b"go away")
                elif scenario == "badlen": reply(c, 3, 2, b"\0\0")
                elif scenario == "listinfo": reply(c, 3, 3, b"\0\0")
                else:
                    reply(c, 3, 2, struct.pack(">I", 1) + b"a" + b"first export")
                    reply(c, 3, 2, struct.pack(">I", 3) + b"bee")
                    reply(c, 3, 1)
            elif opt == 6:
                if scenario == "unknown": reply(c, 6, 0x80000006, b"no such export")
                elif scenario == "infounsup": reply(c, 6, 0x80000001)
                else:
                    # QEMU checks the size against a minimum block sent before it.
                    infos = []
                    if scenario != "noexport":
                        size = 1000 if scenario.startswith("unaligned") else 1 << 20
                        infos.append(struct.pack(">HQH", 0, size, 3))
                    minimum = 3 if scenario == "badblock" else 512
                    infos.append(struct.pack(">HIII", 3, minimum, 4096, 1 << 20))
                    if scenario == "unaligned-late": infos.reverse()
                    for info in infos + [struct.pack(">H", 1) + b"ignored name"]:
                        reply(c, 6, 3, info)
                    reply(c, 6, 1)
            elif opt == 9:
                if scenario == "metaunsup": reply(c, 9, 0x80000001)
                elif data.endswith(b"qemu:"):
                    reply(c, 9, 4, struct.pack(">I", 0) + b"qemu:allocation-depth")
                else:
                    reply(c, 9, 4, struct.pack(">I", 0) + b"base:allocation")
                    reply(c, 9, 4, struct.pack(">I", 0) + b"x-vendor:thing")
                if scenario != "metaunsup": reply(c, 9, 1)
            else:
                reply(c, opt, 0x80000001)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(4)
    while True:
        c, _ = s.accept()
        try:
            serve(c)
        except OSError:
            pass
        c.close()
    """#

  @Test(arguments: [
    ("ok", Int32(0)), ("nosr", 0), ("infounsup", 0), ("metaunsup", 0), ("policy", 1),
    ("badlen", 1), ("listinfo", 1), ("unknown", 1), ("noexport", 1), ("badblock", 1),
    ("unaligned", 0), ("unaligned-late", 1),
  ])
  func scenario(_ name: String, _ status: Int32) async throws {
    let fixture = try ImageFixture()
    let socket = fixture.path("f.sock")
    let python = try #require(ToolLocator.path(of: "python3"))
    let running = try await BackgroundNBDServer(
      command: [python, "-c", Self.server, socket, name], socket: socket)
    let results = try await NBDListTests.listBoth(["-k", socket])
    _ = await running.terminate()
    #expect(results[0].status == status, "\(results[0])")
    #expect(results[1] == results[0])
  }
}
