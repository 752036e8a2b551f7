import BlockTestSupport
import Foundation
import Testing

/// Spindle's `rbd` driver against QEMU 7.2's (qemu-block-extra) on the same
/// single-node Ceph cluster: what one writes the other reads, and the
/// commands print the same. Spindle runs as a child process, as QEMU does.
@Suite(.requiresCeph("qemu-img", "qemu-io"))
struct RBDInteropTests {
  /// Data at 0 and at 9 MiB (in the third 4 MiB object), zeroes between.
  static let qemuWrites = ["write -P 0xab 0 1M", "write -P 0x5c 9M 192k", "write -z 12M 64k"]

  @Test func imagesQEMUWritesSpindleReadsIdentically() async throws {
    try await RBDImages.with { images in
      let fixture = try ImageFixture()
      let image = try await images.create("a", size: "16M")
      try await images.qemuIO(image, Self.qemuWrites)
      // Spindle copies it out; QEMU's compare finds the copy identical.
      let copy = fixture.path("copy.raw")
      let converted = try await runSpindleProcess(
        ["qemu-img", "convert", "-f", "raw", "-O", "raw", image, copy])
      #expect(converted.status == 0, "\(converted)")
      let compared = try await runProcess(
        "qemu-img", ["compare", "-f", "raw", "-F", "raw", image, copy])
      #expect(compared.status == 0 && compared.output == "Images are identical.\n", "\(compared)")
      // And Spindle's compare agrees, reading both sides itself.
      let spindleCompare = try await runSpindleProcess(
        ["qemu-img", "compare", "-f", "raw", "-F", "raw", copy, image])
      #expect(spindleCompare == compared, "\(spindleCompare)")
    }
  }

  @Test func imagesSpindleWritesQEMUReadsIdentically() async throws {
    try await RBDImages.with { images in
      let fixture = try ImageFixture()
      let image = try await images.create("a", size: "16M")
      let local = fixture.path("local.raw")
      try await images.qemuImg(["create", "-q", "-f", "raw", local, "16M"])
      let commands = Self.qemuWrites + ["discard 0 64k", "write -P 0x11 15M 1M"]
      let written = try await runSpindleProcess(
        ["qemu-io", "-f", "raw"] + commands.flatMap { ["-c", $0] } + [image])
      #expect(written.status == 0 && written.error.isEmpty, "\(written)")
      try await images.qemuIO(local, commands)
      let compared = try await runProcess(
        "qemu-img", ["compare", "-f", "raw", "-F", "raw", local, image])
      #expect(compared.output == "Images are identical.\n", "\(compared)")
    }
  }

  /// Many requests in flight at once (`aio_write`/`aio_read` batches) come
  /// back complete and in place.
  @Test func concurrentRequestsComplete() async throws {
    try await RBDImages.with { images in
      let image = try await images.create("a", size: "8M")
      var commands: [String] = []
      for index in 0..<64 {
        commands.append("aio_write -P \(index % 251 + 1) \(index * 128)k 128k")
      }
      commands.append("aio_flush")
      for index in 0..<64 {
        commands.append("aio_read -P \(index % 251 + 1) \(index * 128)k 128k")
      }
      commands.append("aio_flush")
      let (spindle, qemu) = try await runBoth(
        "qemu-io", ["-f", "raw"] + commands.flatMap { ["-c", $0] } + [image])
      #expect(spindle.status == 0 && !spindle.output.contains("Pattern verification failed"))
      // Completions are printed as they come, in an order neither tool fixes.
      func lines(_ result: ToolResult) -> [Substring] {
        result.output.split(separator: "\n").sorted()
      }
      #expect(lines(spindle) == lines(qemu))
      #expect(spindle.error == qemu.error && spindle.status == qemu.status)
    }
  }

  @Test func mapMatchesQEMU() async throws {
    try await RBDImages.with { images in
      let image = try await images.create("a", size: "24M")
      try await images.qemuIO(image, Self.qemuWrites + ["write -P 1 20M 4k", "discard 20M 4M"])
      for arguments in [
        ["map", "--output=json", "-f", "raw", image],
        ["map", "-f", "raw", image],
        ["map", "--output=json", "-f", "raw", "--start-offset=5M", "--max-length=7M", image],
        [
          "map", "--output=json", "--image-opts",
          "driver=rbd,pool=\(images.pool),image=\(images.name("a"))",
        ],
      ] {
        let (spindle, qemu) = try await runBoth("qemu-img", arguments)
        #expect(spindle == qemu, "\(arguments)")
      }
    }
  }

  /// Without fast-diff (and for clones, with librbd 16) QEMU reports all
  /// data; so does Spindle.
  @Test func mapWithoutFastDiffAndOfClonesIsAllData() async throws {
    try await RBDImages.with { images in
      let plain = images.name("plain")
      _ = try await images.rbd([
        "create", "--size", "12M", "--image-feature", "layering", "\(images.pool)/\(plain)",
      ])
      try await images.qemuIO(images.filename("plain"), ["write -P 7 0 64k"])
      _ = try await images.rbd(["snap", "create", "--no-progress", "\(images.pool)/\(plain)@s"])
      _ = try await images.rbd(["snap", "protect", "\(images.pool)/\(plain)@s"])
      _ = try await images.rbd([
        "clone", "\(images.pool)/\(plain)@s", "\(images.pool)/\(images.name("clone"))",
      ])
      for label in ["plain", "clone"] {
        let arguments = ["map", "--output=json", "-f", "raw", images.filename(label)]
        let (spindle, qemu) = try await runBoth("qemu-img", arguments)
        #expect(spindle == qemu, "\(label)")
        #expect(
          spindle.output.contains("\"data\": true") && !spindle.output.contains("\"data\": false"))
      }
      _ = try await images.rbd(["rm", "--no-progress", "\(images.pool)/\(images.name("clone"))"])
      _ = try await images.rbd(["snap", "unprotect", "\(images.pool)/\(plain)@s"])
    }
  }

  @Test func infoMatchesQEMU() async throws {
    try await RBDImages.with { images in
      let image = try await images.create("a", size: "16M", options: "cluster_size=1M")
      let conf = try #require(CephRequirement.configFile())
      let name = images.name("a")
      for arguments in [
        ["info", image],
        ["info", "-f", "raw", image],
        ["info", "-f", "rbd", image],
        ["info", "--output=json", image],
        ["info", "--output=json", "-f", "rbd", image],
        ["info", "-f", "raw", "\(image):conf=\(conf):id=admin:client_mount_timeout=5"],
        ["info", "--image-opts", "driver=rbd,pool=\(images.pool),image=\(name),user=admin"],
        [
          "info",
          #"json:{"driver":"raw","file":{"driver":"rbd","pool":"\#(images.pool)","image":"\#(name)"}}"#,
        ],
      ] {
        let (spindle, qemu) = try await runBoth("qemu-img", arguments)
        #expect(spindle == qemu, "\(arguments)")
      }
    }
  }

  /// `create -f raw rbd:...` (and `-f rbd`) with QEMU's options: the same
  /// output, and images librbd describes alike (size, object order,
  /// features).
  @Test func createMatchesQEMU() async throws {
    try await RBDImages.with { images in
      for (format, options, size) in [
        ("raw", nil, "10M"), ("raw", "cluster_size=64k", "1000"), ("rbd", nil, "3M"),
        ("raw", "cluster_size=1000", "1M"), ("raw", "cluster_size=2k", "1M"),
        ("raw", "preallocation=full", "1M"),
      ] as [(String, String?, String)] {
        let label = "c\(format)\(options?.count ?? 0)\(size)"
        var arguments = ["create", "-f", format]
        if let options { arguments += ["-o", options] }
        let spindle = try await runSpindleProcess(
          ["qemu-img"] + arguments + [images.filename("s" + label), size])
        let qemu = try await runProcess(
          "qemu-img", arguments + [images.filename("q" + label), size])
        func clean(_ result: ToolResult, _ prefix: String) -> ToolResult {
          var result = result
          result.output = result.output.replacingOccurrences(of: prefix + label, with: "NAME")
          result.error = result.error.replacingOccurrences(of: prefix + label, with: "NAME")
          return result
        }
        #expect(clean(spindle, "s") == clean(qemu, "q"), "\(arguments)")
        guard qemu.status == 0 else { continue }
        func describe(_ prefix: String) async throws -> String {
          let info = try await images.rbd([
            "info", "--format", "json", "\(images.pool)/\(images.name(prefix + label))",
          ])
          let object = try JSONSerialization.jsonObject(with: Data(info.utf8)) as? [String: Any]
          return ["size", "order", "object_size", "features", "format"].map {
            "\($0)=\(object?[$0].map { "\($0)" } ?? "-")"
          }.joined(separator: " ")
        }
        #expect(try await describe("s") == describe("q"), "\(arguments)")
      }
      // An existing image is not overwritten.
      let again = try await runBoth(
        "qemu-img", ["create", "-f", "raw", images.filename("scraw010M"), "1M"])
      #expect(again.spindle == again.qemu)
    }
  }

  @Test func convertQcow2ToRBDAndBackIsIdentical() async throws {
    try await RBDImages.with { images in
      let fixture = try ImageFixture()
      let source = fixture.path("source.qcow2")
      try await images.qemuImg(["create", "-q", "-f", "qcow2", source, "10M"])
      let sourceWrites = try await runProcess(
        "qemu-io",
        ["-f", "qcow2", "-c", "write -P 0x21 0 300k", "-c", "write -P 0x42 6M 1M", source])
      try #require(sourceWrites.status == 0)
      let image = images.filename("conv")
      let back = fixture.path("back.raw")
      for arguments in [
        ["convert", "-f", "qcow2", "-O", "raw", source, image],
        ["convert", "-f", "raw", "-O", "raw", image, back],
      ] {
        let result = try await runSpindleProcess(["qemu-img"] + arguments)
        #expect(result.status == 0 && result.error.isEmpty, "\(arguments): \(result)")
      }
      let compared = try await runProcess(
        "qemu-img", ["compare", "-f", "qcow2", "-F", "raw", source, back])
      #expect(compared.output == "Images are identical.\n", "\(compared)")
      let strict = try await runProcess(
        "qemu-img", ["compare", "-f", "qcow2", "-F", "raw", source, image])
      #expect(strict.output == "Images are identical.\n", "\(strict)")
    }
  }

  /// A local qcow2 overlay whose backing file is an RBD image: reads fall
  /// through to RBD, writes stay local, and the overlay checks clean.
  @Test func qcow2OverlayWithRBDBacking() async throws {
    try await RBDImages.with { images in
      let fixture = try ImageFixture()
      let base = try await images.create("base", size: "8M")
      try await images.qemuIO(base, ["write -P 0x77 0 2M"])
      let overlay = fixture.path("overlay.qcow2")
      let qemuOverlay = fixture.path("qemu.qcow2")
      let created = try await runSpindleProcess(
        ["qemu-img", "create", "-f", "qcow2", "-b", base, "-F", "raw", overlay])
      #expect(created.status == 0, "\(created)")
      try await images.qemuImg([
        "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", qemuOverlay,
      ])
      let commands = [
        "read -P 0x77 0 2M", "write -P 0x33 1M 64k", "read -P 0x33 1M 64k", "read -P 0x77 0 1M",
        "map",
      ]
      let spindle = try await runSpindleProcess(
        ["qemu-io"] + commands.flatMap { ["-c", $0] } + [overlay])
      let qemu = try await runProcess("qemu-io", commands.flatMap { ["-c", $0] } + [qemuOverlay])
      #expect(spindle.masked(replacing: overlay) == qemu.masked(replacing: qemuOverlay))
      let check = try await runProcess("qemu-img", ["check", overlay])
      #expect(check.status == 0, "\(check)")
      let (info, qemuInfo) = try await runBoth("qemu-img", ["info", "--backing-chain", overlay])
      #expect(info == qemuInfo)
      // The base is unchanged.
      try await images.qemuIO(base, ["read -P 0x77 0 2M"], readOnly: true)
    }
  }

  /// The same qemu-io script on two fresh images, one through each tool.
  @Test func qemuIOScriptsPrintTheSame() async throws {
    try await RBDImages.with { images in
      let commands = [
        "write -P 0x5a 0 64k", "read -v 0 32", "writev -P 3 1M 4k 8k", "readv -P 3 1M 4k 8k",
        "write -z 2M 1M", "read -P 0 2M 1M", "discard 0 4M", "read -P 0 0 64k", "flush",
        "length", "info", "map", "alloc 0 8M", "truncate 12M", "length", "write -P 9 11M 1M",
        "read -P 9 11M 1M", "aio_write -P 4 64k 64k", "aio_flush", "read -P 4 64k 64k",
        "write -P 1 13M 4k", "length", "read 100M 4k",
      ]
      let spindleImage = try await images.create("s", size: "8M")
      let qemuImage = try await images.create("q", size: "8M")
      let spindle = try await runSpindleProcess(
        ["qemu-io", "-f", "raw"] + commands.flatMap { ["-c", $0] } + [spindleImage])
      let qemu = try await runProcess(
        "qemu-io", ["-f", "raw"] + commands.flatMap { ["-c", $0] } + [qemuImage])
      #expect(
        spindle.masked(replacing: images.name("s")) == qemu.masked(replacing: images.name("q")))
    }
  }

  /// An RBD snapshot opens read-only only (and cannot be reopened
  /// writable), and reads the data of its time.
  @Test func snapshotsOpenReadOnly() async throws {
    try await RBDImages.with { images in
      let image = try await images.create("a", size: "4M")
      try await images.qemuIO(image, ["write -P 0x66 0 1M"])
      _ = try await images.rbd([
        "snap", "create", "--no-progress", "\(images.pool)/\(images.name("a"))@s1",
      ])
      try await images.qemuIO(image, ["write -P 0x99 0 1M"])
      for arguments in [
        ["-r", "-f", "raw", "-c", "read -P 0x66 0 1M", "\(image)@s1"],
        ["-f", "raw", "-c", "read -P 0x66 0 1M", "\(image)@s1"],
        ["-r", "-f", "raw", "-c", "write -P 1 0 4k", "\(image)@s1"],
        ["-r", "-f", "raw", "-c", "read -P 0x99 0 1M", image],
        ["-r", "-f", "raw", "-c", "reopen -w", "-c", "reopen -r", "\(image)@s1"],
        ["-f", "raw", "-c", "reopen -r", "-c", "write 0 4k", "-c", "reopen -w", image],
      ] {
        var (spindle, qemu) = try await runBoth("qemu-io", arguments)
        // QEMU's automatic node names end in two random digits.
        spindle.error.replace(#/#block\d+/#, with: "#blockN")
        qemu.error.replace(#/#block\d+/#, with: "#blockN")
        #expect(spindle == qemu, "\(arguments)")
      }
    }
  }

  /// `qemu-img snapshot` on RBD images takes librbd snapshots, as QEMU's
  /// does: create, list (also in `info`), apply (rollback), delete, and the
  /// same errors; each tool on an image of its own.
  @Test func snapshotCommandMatchesQEMU() async throws {
    try await RBDImages.with { images in
      var transcripts: [String: String] = [:]
      for (tool, label) in [("spindle", "s"), ("qemu", "q")] {
        let image = try await images.create(label, size: "4M")
        try await images.qemuIO(image, ["write -P 0x41 0 64k"])
        var transcript = ""
        func run(_ program: String, _ arguments: [String]) async throws {
          let result =
            tool == "spindle"
            ? try await runSpindleProcess([program] + arguments)
            : try await runProcess(program, arguments)
          transcript += "\(arguments)\n\(result.masked().description)\n"
        }
        try await run("qemu-img", ["snapshot", "-c", "one", image])
        try await run("qemu-img", ["snapshot", "-c", "one", image])
        try await run("qemu-img", ["snapshot", "-f", "rbd", "-c", "two", image])
        try await run("qemu-img", ["snapshot", "-l", image])
        try await run("qemu-img", ["info", image])
        try await run("qemu-img", ["info", "--output=json", "-f", "rbd", image])
        try await images.qemuIO(image, ["write -P 0x42 0 64k"])
        try await run("qemu-img", ["snapshot", "-a", "one", image])
        try await run("qemu-io", ["-r", "-f", "raw", "-c", "read -P 0x41 0 64k", image])
        try await run("qemu-img", ["snapshot", "-a", "nope", image])
        try await run("qemu-img", ["snapshot", "-d", "one", image])
        try await run("qemu-img", ["snapshot", "-d", "nope", image])
        try await run("qemu-img", ["snapshot", "-l", image])
        transcripts[tool] = transcript.replacingOccurrences(of: images.name(label), with: "NAME")
      }
      #expect(transcripts["spindle"] == transcripts["qemu"])
    }
  }

  /// An RBD image exported over NBD (socket activation) and read by
  /// nbdcopy, from `spindle serve` and from qemu-nbd: both copies are the
  /// image's bytes.
  @Test(.requires("qemu-nbd", "nbdcopy")) func servedOverNBDAndReadByNbdcopy() async throws {
    try await RBDImages.with { images in
      let fixture = try ImageFixture()
      let image = try await images.create("a", size: "16M")
      try await images.qemuIO(image, Self.qemuWrites)
      let expected = fixture.path("expected.raw")
      try await images.qemuImg(["convert", "-f", "raw", "-O", "raw", image, expected])
      for server in NBDServer.allCases {
        let out = fixture.path("out-\(server).raw")
        let result = try await runNBDClient(
          "nbdcopy", server.activated(["-f", "raw", "-r", image]) + [out])
        #expect(result.status == 0, "\(server): \(result)")
        let compared = try await runProcess(
          "qemu-img", ["compare", "-f", "raw", "-F", "raw", expected, out])
        #expect(compared.output == "Images are identical.\n", "\(server): \(compared)")
      }
    }
  }

  /// `resize` grows and (with --shrink) shrinks RBD images as QEMU's does,
  /// refusing preallocation; each tool on an image of its own.
  @Test func resizeMatchesQEMU() async throws {
    try await RBDImages.with { images in
      var transcripts: [String: String] = [:]
      for (tool, label) in [("spindle", "s"), ("qemu", "q")] {
        let image = try await images.create(label, size: "4M")
        var transcript = ""
        for arguments in [
          ["resize", "-f", "raw", image, "8M"], ["resize", "-f", "raw", image, "2M"],
          ["resize", "-f", "raw", "--shrink", image, "2M"], ["resize", image, "+1M"],
          ["resize", "-f", "raw", "--preallocation=full", image, "6M"],
          ["info", "--output=json", "-f", "raw", image],
        ] {
          let result =
            tool == "spindle"
            ? try await runSpindleProcess(["qemu-img"] + arguments)
            : try await runProcess("qemu-img", arguments)
          transcript += "\(arguments)\n\(result)\n"
        }
        transcripts[tool] = transcript.replacingOccurrences(of: images.name(label), with: "NAME")
      }
      #expect(transcripts["spindle"] == transcripts["qemu"])
    }
  }

  /// A qcow2 image on RBD (created by QEMU) written by Spindle with 32
  /// allocating writes in flight, qcow2 growing its file past the end:
  /// QEMU then checks it clean and reads every write back. (The race of
  /// concurrent growths is RBDDriverTests' concern: here qcow2's own
  /// ordering of allocations does not produce it.)
  @Test func qcow2OnRBDGrowsUnderConcurrentWrites() async throws {
    try await RBDImages.with { images in
      let image = images.filename("qcow2")
      try await images.qemuImg(["create", "-q", "-f", "qcow2", image, "64M"])
      var writes: [String] = []
      var reads: [String] = []
      for index in 0..<32 {
        writes += ["-c", "aio_write -P \(index + 1) \(index * 2)M 64k"]
        reads += ["read -P \(index + 1) \(index * 2)M 64k"]
      }
      let written = try await runSpindleProcess(
        ["qemu-io", "-f", "qcow2"] + writes + ["-c", "aio_flush", image])
      #expect(written.status == 0 && written.error.isEmpty, "\(written)")
      let check = try await runProcess("qemu-img", ["check", "-f", "qcow2", image])
      #expect(check.status == 0, "\(check)")
      let read = try await runProcess(
        "qemu-io", ["-r", "-f", "qcow2"] + reads.flatMap { ["-c", $0] } + [image])
      #expect(read.status == 0 && !read.output.contains("verification failed"), "\(read)")
    }
  }
}
