import BlockTestSupport
import Foundation
import Testing

/// Differential tests of blkdebug: the real `qemu-io` and `spindle io` run the
/// same commands on copies of one raw image opened through blkdebug (its
/// filename syntax, a configuration file, or json: options). Output, errors,
/// exit status and the resulting images must be identical.
@Suite(.requires("qemu-img", "qemu-io"))
struct BlkdebugDifferentialTests {
  /// A script: arguments with `IMG` standing for the image and `CONF` for the
  /// configuration file (written from `config`), and the commands.
  struct Script: Sendable, CustomTestStringConvertible {
    var name: String
    var arguments: [String]
    var config = ""
    var commands: [String]

    var testDescription: String { name }
  }

  static func json(_ blkdebug: String) -> String {
    #"json:{"driver":"raw","file":{"driver":"blkdebug","image.filename":"IMG","#
      + blkdebug + "}}"
  }

  static let scripts: [Script] = [
    Script(
      name: "break, aio_write, wait_break, resume (probed raw)",
      arguments: ["blkdebug::IMG"],
      commands: [
        "break pwritev_done A", "aio_write 0 512", "wait_break A", "resume A", "aio_flush",
      ]),
    Script(
      name: "a suspended request prints before later commands",
      arguments: ["-f", "raw", "blkdebug::IMG"],
      commands: [
        "break pwritev A", "aio_write -P 3 0 512", "length", "wait_break A", "resume A",
        "aio_flush", "read -P 3 0 512",
      ]),
    Script(
      name: "two breakpoints on one event",
      arguments: ["-f", "raw", "blkdebug::IMG"],
      commands: [
        "break pwritev A", "break pwritev B", "aio_write 0 512", "resume A", "resume B",
        "aio_flush",
      ]),
    Script(
      name: "breakpoint errors and remove_break",
      arguments: ["-f", "raw", "blkdebug::IMG"],
      commands: [
        "break pwritev A", "remove_break A", "remove_break B", "resume B", "break foo B",
        "aio_write 0 512", "aio_flush", "break write_aio C", "aio_write 512 512",
        "wait_break C", "remove_break C", "aio_flush",
      ]),
    Script(
      name: "breakpoints need blkdebug",
      arguments: ["-f", "raw", "IMG"],
      commands: ["break pwritev A", "remove_break A", "resume A"]),
    Script(
      name: "config file: read_aio once with errno 28",
      arguments: ["-f", "raw", "blkdebug:CONF:IMG"],
      config: "[inject-error]\nevent = \"read_aio\"\nerrno = \"28\"\nonce = \"on\"\n",
      commands: ["read 0 512", "read 0 512", "write 0 512", "aio_read 0 512", "aio_flush"]),
    Script(
      name: "config file: set-state after the first write",
      arguments: ["-f", "raw", "blkdebug:CONF:IMG"],
      config: """
        [set-state]
        event = "pwritev_done"
        state = "1"
        new_state = "2"

        [inject-error]
        event = "pwritev"
        state = "2"
        errno = "5"

        """,
      commands: ["write -P 1 0 4k", "write -P 2 4k 4k", "read -P 1 0 4k", "read -P 0 4k 4k"]),
    Script(
      name: "json: inject-error on pwritev once",
      arguments: [json(#""inject-error":[{"event":"pwritev","once":true}]"#)],
      commands: ["write 0 512", "write -P 7 0 512", "read -P 7 0 512", "flush"]),
    Script(
      name: "json: flush iotype from the open, discards pass",
      arguments: [
        json(
          #""inject-error.0.event":"none","inject-error.0.iotype":"flush","inject-error.0.errno":"5""#
        )
      ],
      commands: ["write 0 512", "discard 0 512", "flush", "read 0 512"]),
    Script(
      name: "json: sector rules by offset",
      arguments: [
        json(
          #""inject-error.0.event":"read_aio","inject-error.0.sector":"16","inject-error.0.errno":"28""#
        )
      ],
      commands: ["read 0 4k", "read 4k 4k", "read 8k 4k", "readv 6k 4k", "write 8k 512"]),
    // Not pwritev_rmw_head: QEMU 7.2 ignores a failed read-modify-write read
    // and writes its padding buffer's garbage; Spindle fails the write.
    Script(
      name: "json: RMW after head with align=4k",
      arguments: [
        json(
          #""align":"4096","inject-error.0.event":"pwritev_rmw_after_head","inject-error.0.once":"on""#
        )
      ],
      commands: ["write -P 1 100 100", "write -P 1 100 100", "read -P 1 100 100", "write 4k 4k"]),
    Script(
      name: "json: limits options split zero-writes, discards and transfers",
      arguments: [
        json(
          #""opt-write-zero":"64k","max-write-zero":"128k","opt-discard":"64k","max-discard":"128k","max-transfer":"64k""#
        )
      ],
      commands: [
        "write -P 1 0 512k", "write -z 1000 200k", "write -z -u 256k 200k", "discard 4k 300k",
        "map", "read -P 0 1000 200k", "alloc 0 1M", "info", "truncate 2M", "length", "flush",
      ]),
    Script(
      name: "probed raw over blkdebug: info, map, alloc",
      arguments: ["blkdebug::IMG"],
      commands: ["info", "map", "alloc 0 1M", "write -P 5 0 512", "length"]),
    Script(
      name: "json: pwritev_zero fails zero-writes",
      arguments: [json(#""inject-error.0.event":"pwritev_zero","inject-error.0.errno":"28""#)],
      commands: [
        "write -z 0 4k", "write -z 0 4k", "write 0 4k", "aio_write -z 8k 4k", "aio_flush",
      ]),
    Script(
      name: "json: block-status iotype",
      arguments: [
        json(#""inject-error.0.event":"none","inject-error.0.iotype":"block-status""#)
      ],
      commands: ["map", "alloc 0 4k", "read 0 4k"]),
    Script(
      name: "json: discard iotype",
      arguments: [
        json(
          #""inject-error.0.event":"none","inject-error.0.iotype":"discard","inject-error.0.errno":"1""#
        )
      ],
      commands: ["discard 0 64k", "write -z -u 0 64k", "read -P 0 0 64k"]),
    Script(
      name: "open errors",
      arguments: ["-f", "raw", "blkdebug:IMG"],
      commands: ["read 0 1"]),
    Script(
      name: "missing config file",
      arguments: ["-f", "raw", "blkdebug:/nonexistent/blkdebug.conf:IMG"],
      commands: ["read 0 1"]),
    Script(
      name: "config file with an unknown group",
      arguments: ["-f", "raw", "blkdebug:CONF:IMG"], config: "[bogus]\nevent = \"x\"\n",
      commands: ["read 0 1"]),
    Script(
      name: "config file with an unknown key",
      arguments: ["-f", "raw", "blkdebug:CONF:IMG"], config: "[inject-error]\nfoo = \"1\"\n",
      commands: ["read 0 1"]),
    Script(
      name: "config file with an unquoted value",
      arguments: ["-f", "raw", "blkdebug:CONF:IMG"], config: "[inject-error]\nevent = pwritev\n",
      commands: ["read 0 1"]),
    Script(
      name: "info on blkdebug and copy-on-read",
      arguments: [#"json:{"driver":"blkdebug","image.filename":"IMG"}"#],
      commands: ["info", "length"]),
    Script(
      name: "info on copy-on-read",
      arguments: [#"json:{"driver":"copy-on-read","file.filename":"IMG"}"#],
      commands: ["info"]),
    Script(
      name: "bad event", arguments: [json(#""inject-error.0.event":"foo""#)],
      commands: ["read 0 1"]),
    Script(
      name: "AIO modes reach the file node under blkdebug",
      arguments: ["-f", "raw", "-n", "-i", "native", "blkdebug::IMG"],
      commands: ["write -P 1 0 4k", "read -P 1 0 4k"]),
    Script(
      name: "native AIO without cache=none under blkdebug",
      arguments: ["-f", "raw", "-i", "native", "blkdebug::IMG"], commands: ["read 0 1"]),
    Script(
      name: "copy-on-read filter over raw",
      arguments: [
        #"json:{"driver":"copy-on-read","file":{"driver":"raw","file":{"driver":"file","filename":"IMG"}}}"#
      ],
      commands: [
        "write -P 1 0 4k", "read -P 1 0 4k", "write -z 4k 4k", "discard 0 512", "map", "flush",
        "length",
      ]),
    Script(
      name: "bad align", arguments: [json(#""align":"3""#)], commands: ["read 0 1"]),
    Script(
      name: "take-child-perms and unshare-child-perms",
      arguments: [
        json(#""take-child-perms":["write","resize"],"unshare-child-perms":["consistent-read"]"#)
      ],
      commands: ["write -P 1 0 512", "read -P 1 0 512"]),
    Script(
      name: "take-child-perms write on a read-only image",
      arguments: ["-r", json(#""take-child-perms":["write-unchanged"]"#)], commands: ["read 0 1"]),
    Script(
      name: "unknown child permission",
      arguments: [json(#""unshare-child-perms":["graph-mod"]"#)], commands: ["read 0 1"]),
    Script(
      name: "child permissions must be a list",
      arguments: [json(#""take-child-perms":"write""#)], commands: ["read 0 1"]),
  ]

  @Test(arguments: scripts)
  func sameOutputStatusAndImage(_ script: Script) async throws {
    let fixture = try ImageFixture()
    let base = try fixture.makeImage("base.raw", size: 1 << 20)
    let qemuImage = try fixture.copy(base, to: "qemu.raw")
    let spindleImage = try fixture.copy(base, to: "spindle.raw")
    let config = fixture.path("blkdebug.conf")
    try script.config.write(toFile: config, atomically: true, encoding: .utf8)
    func arguments(_ image: String) -> [String] {
      script.arguments.map {
        $0.replacingOccurrences(of: "IMG", with: image).replacingOccurrences(
          of: "CONF", with: config)
      } + script.commands.flatMap { ["-c", $0] }
    }
    let qemu = try await runProcess("qemu-io", arguments(qemuImage)).masked(replacing: qemuImage)
    let spindle = await runSpindle(["qemu-io"] + arguments(spindleImage))
      .masked(replacing: spindleImage)
    #expect(spindle == qemu)
    try await expectSameImages(qemuImage, spindleImage)
  }
}
