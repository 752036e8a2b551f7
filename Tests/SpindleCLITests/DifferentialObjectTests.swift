import BlockTestSupport
import Foundation
import Testing

@testable import SpindleCLI

/// `--object` against qemu-img: `secret` objects accepted (inline, from a
/// file, raw or base64), QEMU's errors for bad definitions and other types,
/// the same handling in every image command, and `help`.
@Suite struct DifferentialObjectTests {
  /// A small image and files a secret can be read from.
  static func setup(_ directory: String) async throws {
    try await qemuImg(["create", "-q", "-f", "qcow2", "\(directory)/img.qcow2", "1M"])
    try Data("c2VjcmV0\n".utf8).write(to: URL(fileURLWithPath: "\(directory)/key.b64"))
    try Data("s3cret".utf8).write(to: URL(fileURLWithPath: "\(directory)/key.txt"))
  }

  static let definitions: [[String]] = [
    ["secret,id=sec0,data=abc"], ["secret,id=sec0,data=YWJj,format=base64"],
    ["secret,id=s,data=abc,format=raw"], ["secret,id=s,file=DIR/key.txt"],
    ["secret,id=s,file=DIR/key.b64,format=base64"], ["qom-type=secret,id=s,data=a"],
    ["secret,id=s,data=a,data=b"], ["secret,id=s,data=a,"], ["secret,id=s,data=a,iv=x"],
    ["secret,id=a,data=x", "secret,id=b,data=y"],
    // Errors.
    ["secret,id=a,data=x", "secret,id=a,data=y"], ["secret,data=abc"], ["secret"],
    ["secret,id=s,data=abc,format=hex"], ["secret,id=s,data=a,format="],
    ["secret,id=s,data=abc,bogus=1"], ["secret,id=s"], ["secret,id=s,file=DIR/missing"],
    ["secret,id=s,file=DIR"], ["secret,id=s,data=abc,file=DIR/key.txt"],
    ["secret,id=s,data=!!,format=base64"], ["secret,id=1bad,data=a"], ["secret,id=,data=a"],
    ["secret,id=a b,data=a"], ["secret,id=s,data=a,keyid=k"], ["secret,qom-type=x,id=s,data=a"],
    ["foo,id=x"], ["foo"], ["Secret,id=s,data=a"], ["id=x"], [""],
    ["memory-backend-ram,id=m,size=1M"], ["iothread,id=io"], ["iothread"],
    ["secret,id=a,data=x", "secret,id=a"], ["secret,id=s,keyid=s,data=y"],
    // Key syntax (QEMU's keyval parser).
    ["secret,id=s,data=a,a.b=1"], ["secret,id=s,da ta=x"], ["secret,,id=s"],
    ["secret,id=s,data=a,,"], ["secret,id=s,=x"], ["secret,id=s,data"], ["help,secret"],
    ["secret,id=s,data=a,help=1"], ["secret,id=s,data.x=1"], ["secret,id=s,data=1,data.x=1"],
    ["secret,id=s," + String(repeating: "k", count: 130) + "=1"],
    ["secret,id=s,data=a,format=base64,format.x=1"], ["secret,id=s,data=a,x_y=1"],
    ["secret,id=s,data=a,1x=1"], ["secret,id=s,data=a,b,c=d"], [",id=x"],
    // JSON definitions.
    [#"{"qom-type":"secret","id":"s","data":"a"}"#], [#"{"qom-type":"secret","id":"s"}"#],
    [#"{"qom-type":"foo","id":"s"}"#], [#"{"qom-type":"secret","id":"s","data":"a","x":"1"}"#],
    // Help for a type, and an error before it stops the command.
    ["secret,help"], ["secret,id=s,data=a,help"], ["foo,id=x", "secret,help"],
    ["secret,id=s,data=a,?"],
  ]

  @Test(
    .requires("qemu-img"), arguments: definitions)
  func infoWithObjectsMatches(_ objects: [String]) async throws {
    let arguments = objects.flatMap { ["--object", $0] }
    let run = try await runImageCommand(
      ["info"] + arguments + ["DIR/img.qcow2"], setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
  }

  /// Every command that takes `--object` handles it the same way.
  static let commands: [[String]] = [
    ["create", "-f", "qcow2", "OBJ", "DIR/new.qcow2", "1M"], ["check", "OBJ", "DIR/img.qcow2"],
    ["map", "OBJ", "DIR/img.qcow2"], ["measure", "OBJ", "DIR/img.qcow2"],
    ["convert", "OBJ", "-O", "raw", "DIR/img.qcow2", "DIR/out.raw"],
    ["compare", "OBJ", "DIR/img.qcow2", "DIR/img.qcow2"],
    ["resize", "OBJ", "DIR/img.qcow2", "2M"],
    ["dd", "OBJ", "if=DIR/img.qcow2", "of=DIR/out.raw", "bs=64k"],
    ["commit", "OBJ", "DIR/img.qcow2"], ["rebase", "OBJ", "-u", "-b", "", "DIR/img.qcow2"],
    ["amend", "OBJ", "-o", "lazy_refcounts=on", "DIR/img.qcow2"],
  ]

  @Test(.requires("qemu-img"), arguments: commands)
  func commandsAcceptSecrets(_ command: [String]) async throws {
    for object in ["secret,id=sec0,data=abc", "foo,id=x", "secret,data=x"] {
      let arguments = command.flatMap { $0 == "OBJ" ? ["--object", object] : [$0] }
      let run = try await runImageCommand(arguments, setup: Self.setup)
      #expect(run.spindle == run.qemu, "\(arguments)\n\(run)")
    }
  }

  /// qemu-io takes `--object` too, through the same registry.
  @Test(
    .requires("qemu-io"),
    arguments: [["foo,id=x"], ["secret,id=s,data=x"], ["secret,help"], ["secret,data=x"]])
  func qemuIOHandlesObjects(_ objects: [String]) async throws {
    let fixture = try ImageFixture()
    let image = try fixture.makeImage("img.raw")
    let arguments =
      objects.flatMap { ["--object", $0] } + ["-f", "raw", "-c", "read 0 512", image]
    let qemu = try await runProcess("qemu-io", arguments).masked()
    let spindle = await runSpindle(["qemu-io"] + arguments).masked()
    #expect(spindle == qemu)
  }

  /// `--object help` lists the types Spindle can create, in QEMU's layout;
  /// each of them is one qemu-img lists too.
  @Test(.requires("qemu-img"))
  func helpListsSpindleTypes() async throws {
    let run = try await runImageCommand(
      ["info", "--object", "help", "DIR/img.qcow2"], setup: Self.setup)
    #expect(run.spindle.status == 0 && run.qemu.status == 0)
    #expect(
      run.spindle.output
        == "List of user creatable objects:\n  authz-simple\n  secret\n  tls-creds-psk\n"
        + "  tls-creds-x509\n")
    let qemuTypes = run.qemu.output.split(separator: "\n").dropFirst()
    for line in run.spindle.output.split(separator: "\n").dropFirst() {
      #expect(qemuTypes.contains(line), "\(line) is not in \(run.qemu.output)")
    }
    #expect(run.spindle.output.hasPrefix(String(run.qemu.output.prefix(32))))
  }

  /// QEMU's other creatable types are refused, naming the type.
  @Test func otherCreatableTypesAreRefused() async {
    for definition in ["authz-list,id=a", "throttle-group,help"] {
      let result = await runSpindle(["qemu-img", "info", "--object", definition, "/nonexistent"])
      #expect(result.status == 1)
      let type = definition.prefix { $0 != "," }
      #expect(result.error == "qemu-img: Object type '\(type)' is not supported by Spindle yet\n")
    }
  }

  /// Secrets are kept by ID for the commands that will use them.
  @Test func registryKeepsSecrets() throws {
    var registry = ObjectRegistry()
    #expect(try registry.define("secret,id=k1,data=a,,b") == nil)
    #expect(try registry.define("secret,id=k2,data=YWJj,format=base64") == nil)
    #expect(registry.secret("k1")?.bytes == Array("a,b".utf8))
    #expect(registry.secret("k2")?.isBase64 == true)
    #expect(registry.secret("k3") == nil)
  }
}
