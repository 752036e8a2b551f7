import BlockTestSupport
import Foundation
import Testing

/// How images are named and opened, against qemu-img and qemu-io 7.2:
/// `json:` names in QEMU's JSON dialect, filenames a parent hands to a
/// child (`blkdebug::IMAGE` under a format), `backing.*` options, the
/// `file:` protocol prefix, backing paths of `json:` names, and `create`
/// options QEMU accepts.
@Suite(.requires("qemu-img", "qemu-io"))
struct DifferentialOpenOptionsTests {
  static let template = Task { try await ImageTemplate.build(build) }

  static func setup(_ directory: String) async throws {
    try await template.value.copy(into: directory)
  }

  /// `base.qcow2` (0x01 in its first 64 KiB), `top.qcow2` over it (0x02 at
  /// 32 KiB), `i:t.qcow2` (a copy of base with a colon in its name) and
  /// `r:1.raw`.
  @Sendable static func build(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    try await qemuImg(["create", "-q", "-f", "qcow2", path("base.qcow2"), "1M"])
    let base = try await runProcess("qemu-io", ["-c", "write -P 1 0 64k", path("base.qcow2")])
    #expect(base.status == 0, "\(base)")
    try await qemuImg([
      "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", path("top.qcow2"),
    ])
    let top = try await runProcess("qemu-io", ["-c", "write -P 2 32k 64k", path("top.qcow2")])
    #expect(top.status == 0, "\(top)")
    try FileManager.default.copyItem(atPath: path("base.qcow2"), toPath: path("i:t.qcow2"))
    try await qemuImg(["create", "-q", "-f", "raw", path("r:1.raw"), "1M"])
  }

  /// Runs qemu-img arguments with both tools and compares everything.
  func expectSameRun(_ arguments: [String]) async throws {
    let run = try await runImageCommand(arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
    #expect(try run.spindleFileNames() == run.fileNames())
    try await expectSameImages(run)
  }

  // MARK: - json: names in QEMU's JSON dialect (issue 10, item 6)

  static let jsonNames: [String] = [
    "json:{'driver': 'qcow2', 'file': {'driver': 'file', 'filename': 'DIR/top.qcow2'}}",
    #"json:{'driver': 'qc\u006fw2', "file": {'driver': 'file', 'filename': 'DIR\/top.qcow2'}}"#,
    #"json:{'driver': "raw", 'file': {'driver': 'file', 'filename': 'DIR/r:1.raw', 'x': "it's"}}"#,
    #"json:{'driver': 'raw', 'file': {'driver': 'file', 'filename': 'DIR/r\'1.raw'}}"#,
    "json:{'driver': 'raw', 'file': {'driver': 'file', 'filename': 'DIR/r:1.raw', 'locking': 'off'}}",
    "json:{'driver': 'qcow2', 'file': {'driver': 'file', 'filename': 'DIR/top.qcow2'}, 'lazy-refcounts': true}",
    "json:", "json:   ", "json:{", "json:[1]", "json:{'a': 1} {}", "json:{'a': 1} @",
    "json:{'driver': 'qcow2', 'driver': 'raw'}", "json:{'driver': 'raw' 'x'}",
    "json:{driver: 'raw'}", #"json:{'a\x': 1}"#, "json:{'a': @}", "json:{'a': 01}",
    "json:{'a': 'x\ty'}", "json:{'a': 1.}", "json:{'a': -}", "json:{'a': 1e}", "json:{'a': 1,}",
    "json:{'a': [1,]}", "json:{'a': [1 2]}", "json:{'a': tru}", "json:{'a': %d}",
    #"json:{'a': '\uD800'}"#, #"json:{'a': '\u12'}"#, #"json:{'a': '\uD800\u0041'}"#,
    #"json:{'a': '\uD83D\uDE00'}"#, #"json:{'a': '\uFFFF'}"#, "json:{'a': 'é'}", "json:{1: 2}",
    "json:{'a' 1}", "json:{'a':}", "json:{'a': 'abc", "json:}", "json:{'a': [[1]]}}",
    "json:{'a': True}", "json:{'a': 0.5e-3, 'b': -0, 'c': 18446744073709551615}",
  ]

  @Test(arguments: jsonNames)
  func jsonNamesParseAsQEMU(_ name: String) async throws {
    try await expectSameRun(["info", name])
  }

  /// A fractional size needs a suffix. QEMU reports the same error for a
  /// bare `1.5` but then aborts (its `error_abort`), so only the message is
  /// compared; with a suffix both open the image.
  @Test func fractionalSizesNeedASuffix() async throws {
    let options = "driver=null-co,size=1.5"
    let qemu = try await runProcess("qemu-img", ["info", "--image-opts", options])
    let spindle = await runSpindle(["qemu-img", "info", "--image-opts", options])
    let message = "Parameter 'size' expects a non-negative number below 2^64"
    #expect(qemu.error.contains("qemu-img: \(message)\n"))
    #expect(spindle.status == 1)
    #expect(spindle.error.hasPrefix("qemu-img: Could not open '\(options)': \(message)\n"))
    let suffixed = ["--image-opts", "driver=null-co,size=1.5k", "-c", "length"]
    let qemuLength = try await runProcess("qemu-io", suffixed)
    #expect(await runSpindle(["qemu-io"] + suffixed) == qemuLength)
  }

  /// Token soup (a fixed pseudo-random sequence of JSON pieces, valid and
  /// not) reads the same in both: same value or same error.
  static let jsonSoup: [String] = {
    let atoms = [
      "{", "}", "[", "]", ",", ":", "'a'", #""b""#, "1", "-2", "0.5", "1e3", "true", "null",
      #"'\u0041'"#, #"'\x'"#, #"'\''"#, #""'""#, "@", "'é'", "01", "'x\ty'", " ", "'driver'",
      "'raw'", "'file'",
    ]
    var state: UInt64 = 7
    func next(_ bound: Int) -> Int {
      state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      return Int((state >> 33) % UInt64(bound))
    }
    return (0..<80).map { _ in
      "json:" + (0...next(9)).map { _ in atoms[next(atoms.count)] }.joined()
    }
  }()

  @Test(arguments: jsonSoup)
  func jsonSoupReadsAsQEMU(_ name: String) async throws {
    let qemu = try await runProcess("qemu-img", ["info", name])
    #expect(await runSpindle(["qemu-img", "info", name]) == qemu)
  }

  // MARK: - A filename handed to a format child (item 7)

  static let childFilenameRuns: [[String]] = [
    [
      "-c", "open -o driver=blkdebug,image.driver=qcow2 blkdebug::DIR/top.qcow2",
      "-c", "read -P 2 32k 64k", "-c", "read -P 1 0 32k",
    ],
    ["-c", "open -o driver=blkdebug,image.driver=raw blkdebug::DIR/r:1.raw", "-c", "read 0 512"],
    [#"json:{"driver":"blkdebug","image":{"driver":"qcow2","filename":"DIR/top.qcow2"}}"#],
  ]

  // MARK: - backing.* options (item 9)

  static let backingOptionRuns: [[String]] = [
    [
      "-r", "-c", "open -o backing.driver=qcow2,backing.node-name=foo DIR/top.qcow2", "-c",
      "read -P 1 0 32k",
    ],
    ["-c", "open -o backing.driver=raw DIR/top.qcow2", "-c", "read -v 0 16"],
    ["-c", "open -o backing.foo=1 DIR/top.qcow2"],
    ["-c", "open -o backing.file.filename=DIR/none.qcow2 DIR/top.qcow2"],
    ["-c", "open -o backing.file.filename=DIR/i:t.qcow2 DIR/top.qcow2", "-c", "read -P 1 0 32k"],
  ]

  @Test(arguments: childFilenameRuns + backingOptionRuns)
  func qemuIOOpensAsQEMU(_ template: [String]) async throws {
    let fixture = try ImageFixture()
    let directory = fixture.path("d")
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    try await Self.setup(directory)
    let arguments = template.map { $0.replacingOccurrences(of: "DIR", with: directory) }
    let qemu = try await runProcess("qemu-io", arguments).masked(replacing: directory)
    let spindle = await runSpindle(["qemu-io"] + arguments).masked(replacing: directory)
    #expect(spindle == qemu)
  }

  @Test func backingOptionsNeedABackingOpen() async throws {
    try await expectSameRun([
      "info", "--image-opts", "driver=qcow2,file.filename=DIR/top.qcow2,backing.driver=qcow2",
    ])
  }

  // MARK: - The file: protocol prefix (item 10)

  static let fileProtocolRuns: [[String]] = [
    ["info", "file:DIR/i:t.qcow2"], ["info", "--output=json", "file:DIR/top.qcow2"],
    ["info", "-f", "raw", "file:DIR/i:t.qcow2"],
    ["create", "-f", "qcow2", "file:DIR/a:b.qcow2", "1M"],
    ["create", "-f", "raw", "file:DIR/a:b.raw", "1M"],
    ["create", "-f", "qcow2", "-b", "file:DIR/base.qcow2", "-F", "qcow2", "file:DIR/o:2.qcow2"],
    ["create", "-f", "qcow2", "-o", "data_file=file:DIR/d:1.raw", "DIR/x.qcow2", "1M"],
    ["convert", "-O", "qcow2", "file:DIR/top.qcow2", "file:DIR/o:1.qcow2"],
    ["convert", "-O", "raw", "-n", "file:DIR/top.qcow2", "file:DIR/r:1.raw"],
    ["dd", "if=file:DIR/top.qcow2", "of=file:DIR/d:1.raw", "-O", "raw"],
    ["rebase", "-u", "-b", "file:DIR/i:t.qcow2", "-F", "qcow2", "file:DIR/top.qcow2"],
    ["resize", "-f", "raw", "file:DIR/r:1.raw", "2M"],
    ["amend", "-o", "lazy_refcounts=on", "file:DIR/i:t.qcow2"],
    ["map", "--output=json", "file:DIR/top.qcow2"], ["check", "file:DIR/i:t.qcow2"],
    ["compare", "file:DIR/i:t.qcow2", "DIR/base.qcow2"],
    ["measure", "-O", "qcow2", "file:DIR/top.qcow2"], ["commit", "file:DIR/top.qcow2"],
  ]

  @Test(arguments: fileProtocolRuns)
  func fileProtocolPrefixIsHonoured(_ arguments: [String]) async throws {
    try await expectSameRun(arguments)
  }

  /// Relative names: `file:a:b` is the file `./a:b` (QEMU adds `./` so the
  /// rest does not read as a protocol), as `info` and the probed-raw
  /// warning show. Run with each tool's working directory set.
  @Test(
    .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"),
    arguments: [
      ["info", "file:i:t.qcow2"], ["info", "--output=json", "file:top.qcow2"],
      ["resize", "file:r:1.raw", "2M"], ["create", "-f", "qcow2", "file:c:1.qcow2", "1M"],
    ])
  func relativeFileProtocolNames(_ arguments: [String]) async throws {
    let fixture = try ImageFixture()
    var results: [ToolResult] = []
    var listings: [[String]] = []
    let links = try SpindleExecutable.links()
    for (index, environment) in [nil, ["PATH": links.directory.path]].enumerated() {
      let directory = fixture.path("\(index)")
      try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
      try await Self.setup(directory)
      // `env -C DIRECTORY qemu-img ...`: the tool runs in the directory.
      results.append(
        try await runProcess("-C", [directory, "qemu-img"] + arguments, environment: environment))
      listings.append(try FileManager.default.contentsOfDirectory(atPath: directory).sorted())
    }
    #expect(results[1] == results[0])
    #expect(listings[1] == listings[0])
  }

  // MARK: - Backing paths of json: names (item 11)

  static let jsonBackingRuns: [[String]] = [
    [
      "info",
      #"json:{"driver":"qcow2","file":{"driver":"blkdebug","image":{"driver":"file","filename":"DIR/top.qcow2"}}}"#,
    ],
    [
      "info", "--output=json",
      #"json:{"driver":"qcow2","file":{"driver":"blkdebug","image":{"driver":"file","filename":"DIR/top.qcow2"}}}"#,
    ],
    ["info", "--backing-chain", "blkdebug::DIR/top.qcow2"],
    [
      "info", "--image-opts", "driver=qcow2,file.driver=blkdebug,file.image.filename=DIR/top.qcow2",
    ],
  ]

  @Test(arguments: jsonBackingRuns)
  func backingPathsFollowTheImageFolder(_ arguments: [String]) async throws {
    try await expectSameRun(arguments)
  }

  // MARK: - create options QEMU accepts (item 13)

  static let createRuns: [[String]] = [
    ["create", "-f", "qcow2", "-o", "encryption=off", "DIR/e.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "encryption=no,nocow=off", "DIR/e.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "nocow=off,encryption=off", "DIR/e.qcow2", "1M"],
    ["convert", "-O", "qcow2", "-o", "encryption=off", "DIR/top.qcow2", "DIR/e.qcow2"],
    [
      "create", "-f", "qcow2", "-o", "extended_l2=on,preallocation=metadata", "-b", "base.qcow2",
      "-F", "qcow2", "DIR/x.qcow2", "1M",
    ],
    [
      "create", "-f", "qcow2", "-o", "extended_l2=on,preallocation=falloc,cluster_size=32k", "-b",
      "DIR/top.qcow2", "-F", "qcow2", "DIR/x.qcow2",
    ],
    [
      "create", "-f", "qcow2", "-o", "extended_l2=off,preallocation=metadata", "-b", "base.qcow2",
      "-F", "qcow2", "DIR/x.qcow2", "1M",
    ],
  ]

  @Test(arguments: createRuns)
  func createAcceptsWhatQEMUAccepts(_ arguments: [String]) async throws {
    try await expectSameRun(arguments)
  }
}
