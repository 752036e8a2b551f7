import BlockTestSupport
import Foundation
import Testing

/// Spindle on a filesystem that really fills: a small tmpfs (see
/// ``SmallFilesystem``) runs out of space under qcow2 allocating writes,
/// convert, create and resize with preallocation, commit and amend (see
/// docs/reliability.md). The real QEMU tool runs the same command on an
/// identical tmpfs and is the oracle for the messages and exit statuses;
/// afterwards every image left behind must pass `qemu-img check` (leaks
/// allowed) and keep the data that was written and flushed before the disk
/// filled.
@Suite(.requiresMounting, .requires("qemu-img", "qemu-io"))
struct FullDiskTests {
  /// The tmpfs size of the tests (convert uses 3 MiB): 2 MiB, against up to
  /// 4 MiB of data.
  static let filesystemKiB = 2048

  /// One command run by the real tool and by Spindle (in-process, invoked
  /// under the tool's name), each on its own tmpfs prepared by the same
  /// set-up; `FS` in the arguments and in the outputs stands for the mount
  /// directory (both have names of equal length).
  struct Run: CustomStringConvertible {
    var qemu: ToolResult
    var spindle: ToolResult
    let qemuDisk: SmallFilesystem
    let spindleDisk: SmallFilesystem

    var description: String { "QEMU:\n\(qemu)\nSpindle:\n\(spindle)" }

    /// The files left on each filesystem.
    func files() throws -> (qemu: [String], spindle: [String]) {
      let manager = FileManager.default
      return (
        try manager.contentsOfDirectory(atPath: qemuDisk.path).sorted(),
        try manager.contentsOfDirectory(atPath: spindleDisk.path).sorted()
      )
    }

    /// Unmounts both filesystems (also done when the run is released).
    func unmount() {
      qemuDisk.unmount()
      spindleDisk.unmount()
    }
  }

  /// Mounts two filesystems, runs `setup` with each directory, then `tool`
  /// (`qemu-img` or `qemu-io`) with `arguments` on one and Spindle on the
  /// other.
  static func run(
    _ tool: String, _ arguments: [String], kibibytes: Int = filesystemKiB,
    setup: (String) async throws -> Void = { _ in }
  ) async throws -> Run {
    try await run(
      tool, kibibytes: kibibytes,
      { directory in arguments.map { $0.replacingOccurrences(of: "FS", with: directory) } },
      setup: setup)
  }

  /// ``run(_:_:kibibytes:setup:)`` with the arguments made from each mount directory.
  static func run(
    _ tool: String, kibibytes: Int = filesystemKiB, _ arguments: (String) -> [String],
    setup: (String) async throws -> Void = { _ in }
  ) async throws -> Run {
    let qemuDisk = try SmallFilesystem(kibibytes: kibibytes)
    let spindleDisk = try SmallFilesystem(kibibytes: kibibytes)
    try await setup(qemuDisk.path)
    try await setup(spindleDisk.path)
    func masked(_ result: ToolResult, _ directory: String) -> ToolResult {
      var result = result.masked()
      result.output = result.output.replacingOccurrences(of: directory, with: "FS")
      result.error = result.error.replacingOccurrences(of: directory, with: "FS")
      return result
    }
    let qemu = try await runProcess(tool, arguments(qemuDisk.path))
    let spindle = await runSpindle([tool] + arguments(spindleDisk.path))
    return Run(
      qemu: masked(qemu, qemuDisk.path), spindle: masked(spindle, spindleDisk.path),
      qemuDisk: qemuDisk, spindleDisk: spindleDisk)
  }

  /// `qemu-img check` of `path`; fails the test unless the image is
  /// consistent (exit status 0, or 3: leaked clusters only).
  @discardableResult
  static func expectConsistent(_ path: String, sourceLocation: SourceLocation = #_sourceLocation)
    async throws -> ToolResult
  {
    let check = try await runProcess("qemu-img", ["check", path])
    #expect([0, 3].contains(check.status), "\(path): \(check)", sourceLocation: sourceLocation)
    return check
  }

  /// Reads `ranges` (pattern, offset, length as qemu-io takes them) of
  /// `path` with the real qemu-io, which must find every pattern.
  static func expectPatterns(
    _ path: String, _ ranges: [(pattern: Int, offset: String, length: String)],
    format: String = "qcow2", sourceLocation: SourceLocation = #_sourceLocation
  ) async throws {
    let commands = ranges.flatMap { ["-c", "read -P \($0.pattern) \($0.offset) \($0.length)"] }
    let result = try await runProcess("qemu-io", ["-f", format] + commands + [path])
    #expect(
      result.status == 0 && !result.output.contains("Pattern verification failed"),
      "\(path): \(result)", sourceLocation: sourceLocation)
  }

  /// Allocating writes until ENOSPC: the same "write failed: No space left
  /// on device" as qemu-io, the data flushed before (and a rewrite of
  /// allocated clusters after) intact, the image consistent.
  @Test func allocatingWritesRunOutOfSpace() async throws {
    let run = try await Self.run(
      "qemu-io",
      [
        "-c", "write -P 1 0 512k", "-c", "flush", "-c", "write -P 2 512k 1M", "-c", "flush",
        "-c", "write -P 3 1536k 1M", "-c", "write -P 4 2560k 1M",
        // Clusters already allocated can still be written.
        "-c", "write -P 5 0 64k", "-c", "flush", "FS/a.qcow2",
      ]
    ) { directory in
      try await qemuImg(["create", "-q", "-f", "qcow2", "\(directory)/a.qcow2", "4M"])
    }
    defer { run.unmount() }
    #expect(run.spindle == run.qemu, "\(run)")
    #expect(run.spindle.output.contains("write failed: No space left on device"), "\(run)")
    let image = run.spindleDisk.path("a.qcow2")
    try await Self.expectConsistent(image)
    try await Self.expectPatterns(
      image, [(5, "0", "64k"), (1, "64k", "448k"), (2, "512k", "1M")])
    // The failed writes left nothing behind, as in QEMU's image.
    let compare = try await runProcess(
      "qemu-img", ["compare", run.qemuDisk.path("a.qcow2"), image])
    #expect(compare.status == 0, "\(compare)")
  }

  /// `convert` of 4 MiB of data onto 3 MiB (the first 2 MiB chunk fits
  /// with room to spare, the second does not): the error and exit status of
  /// qemu-img; a target left behind passes check.
  @Test(arguments: ["qcow2", "raw"])
  func convertRunsOutOfSpace(_ format: String) async throws {
    let fixture = try ImageFixture()
    let source = fixture.path("source.raw")
    try await qemuImg(["create", "-q", "-f", "raw", source, "4M"])
    let fill = try await runProcess("qemu-io", ["-f", "raw", "-c", "write -P 7 0 4M", source])
    #expect(fill.status == 0, "\(fill)")
    let run = try await Self.run(
      "qemu-img", ["convert", "-f", "raw", "-O", format, source, "FS/target"], kibibytes: 3072)
    defer { run.unmount() }
    #expect(run.spindle == run.qemu, "\(run)")
    #expect(run.spindle.status == 1)
    #expect(
      run.spindle.error
        == "qemu-img: error while writing at byte 2097152: No space left on device\n",
      "\(run)")
    let files = try run.files()
    #expect(files.spindle == files.qemu)
    if format == "qcow2", files.spindle.contains("target") {
      try await Self.expectConsistent(run.spindleDisk.path("target"))
    }
  }

  /// `create` with preallocation larger than the disk: qemu-img's message
  /// (qcow2 prefixes "Could not resize image: Failed to resize underlying
  /// file: ") and exit status; a qcow2 image is removed, a raw one is left
  /// empty, as QEMU does.
  @Test(arguments: [
    ["-f", "qcow2", "-o", "preallocation=full"], ["-f", "qcow2", "-o", "preallocation=falloc"],
    ["-f", "raw", "-o", "preallocation=full"], ["-f", "raw", "-o", "preallocation=falloc"],
  ])
  func createRunsOutOfSpace(_ options: [String]) async throws {
    let run = try await Self.run("qemu-img", ["create"] + options + ["FS/image", "4M"])
    defer { run.unmount() }
    #expect(run.spindle == run.qemu, "\(run)")
    #expect(run.spindle.status == 1)
    let files = try run.files()
    #expect(files.spindle == files.qemu)
  }

  /// `resize` of a qcow2 image with preallocation beyond the space:
  /// qemu-img's message and exit status, the image unchanged and
  /// consistent.
  @Test(arguments: ["full", "falloc"])
  func resizeRunsOutOfSpace(_ mode: String) async throws {
    let run = try await Self.run(
      "qemu-img", ["resize", "--preallocation=\(mode)", "FS/a.qcow2", "4M"]
    ) { directory in
      try await qemuImg(["create", "-q", "-f", "qcow2", "\(directory)/a.qcow2", "1M"])
      let fill = try await runProcess(
        "qemu-io", ["-c", "write -P 3 0 1M", "\(directory)/a.qcow2"])
      #expect(fill.status == 0, "\(fill)")
    }
    defer { run.unmount() }
    #expect(run.spindle == run.qemu, "\(run)")
    #expect(run.spindle.status == 1)
    let image = run.spindleDisk.path("a.qcow2")
    let check = try await Self.expectConsistent(image)
    let qemuCheck = try await runProcess("qemu-img", ["check", run.qemuDisk.path("a.qcow2")])
    #expect(
      check.masked(replacing: image) == qemuCheck.masked(replacing: run.qemuDisk.path("a.qcow2")))
    let info = try await runProcess("qemu-img", ["info", "--output=json", image])
    #expect(info.output.contains("\"virtual-size\": 1048576"), "\(info)")
    try await Self.expectPatterns(image, [(3, "0", "1M")])
  }

  /// `commit` of a 3 MiB overlay into a base on the full disk: qemu-img's
  /// "Block job failed: No space left on device" and exit status; the base
  /// consistent with its data outside the committed range, the overlay
  /// (on another filesystem) untouched and not emptied, so that the chain
  /// still reads what it did.
  @Test func commitRunsOutOfSpace() async throws {
    let fixture = try ImageFixture()
    func top(_ directory: String) -> String {
      fixture.path("top-\((directory as NSString).lastPathComponent).qcow2")
    }
    let run = try await Self.run(
      "qemu-img", { ["commit", top($0)] },
      setup: { directory in
        let base = "\(directory)/base.qcow2"
        try await qemuImg(["create", "-q", "-f", "qcow2", base, "4M"])
        let fill = try await runProcess(
          "qemu-io", ["-c", "write -P 1 0 256k", "-c", "write -P 6 3584k 256k", base])
        #expect(fill.status == 0, "\(fill)")
        try await qemuImg([
          "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top(directory),
        ])
        let write = try await runProcess("qemu-io", ["-c", "write -P 9 0 3M", top(directory)])
        #expect(write.status == 0, "\(write)")
      })
    defer { run.unmount() }
    #expect(run.spindle == run.qemu, "\(run)")
    #expect(run.spindle.status == 1)
    let base = run.spindleDisk.path("base.qcow2")
    try await Self.expectConsistent(base)
    try await Self.expectPatterns(base, [(6, "3584k", "256k")])
    let overlay = top(run.spindleDisk.path)
    try await Self.expectConsistent(overlay)
    try await Self.expectPatterns(
      overlay, [(9, "0", "3M"), (0, "3M", "512k"), (6, "3584k", "256k")])
  }

  /// Fills the filesystem holding `directory` with a file of zeroes until
  /// `bytes` remain free.
  static func fill(_ directory: String, leaving bytes: Int) throws {
    var stats = statvfs()
    #expect(statvfs(directory, &stats) == 0)
    let available = Int(stats.f_bavail) * Int(stats.f_frsize)
    #expect(available > bytes, "only \(available) bytes free")
    try Data(count: max(0, available - bytes)).write(
      to: URL(fileURLWithPath: "\(directory)/filler"))
  }

  /// `amend -o refcount_bits=64` with 32 KiB left, too little for the new
  /// refcount blocks: qemu-img's "Failed to write refblock: No space left on
  /// device" and exit status, the image unchanged (16-bit refcounts, its
  /// data) and, as QEMU leaves it, without leaked clusters.
  @Test func amendRunsOutOfSpace() async throws {
    let run = try await Self.run("qemu-img", ["amend", "-o", "refcount_bits=64", "FS/a.qcow2"]) {
      directory in
      let image = "\(directory)/a.qcow2"
      try await qemuImg(["create", "-q", "-f", "qcow2", image, "4M"])
      let write = try await runProcess("qemu-io", ["-c", "write -P 4 0 1M", image])
      #expect(write.status == 0, "\(write)")
      try Self.fill(directory, leaving: 32 << 10)
    }
    defer { run.unmount() }
    #expect(run.spindle == run.qemu, "\(run)")
    #expect(run.spindle.status == 1)
    let image = run.spindleDisk.path("a.qcow2")
    let check = try await runProcess("qemu-img", ["check", image])
    let qemuCheck = try await runProcess("qemu-img", ["check", run.qemuDisk.path("a.qcow2")])
    #expect(check.status == 0, "\(check)")
    #expect(
      check.masked(replacing: image) == qemuCheck.masked(replacing: run.qemuDisk.path("a.qcow2")))
    let info = try await runProcess("qemu-img", ["info", image])
    #expect(info.output.contains("refcount bits: 16"), "\(info)")
    try await Self.expectPatterns(image, [(4, "0", "1M")])
  }
}
