import BlockTestSupport
import Foundation
import Testing

/// Differential tests of `spindle io` on qcow2: the real `qemu-io` and
/// `spindle io` run the same commands on identical copies of a qcow2 image,
/// alone or over a backing chain (qcow2 over qcow2 over a short raw file,
/// shared read-only by both runs). Output and exit status must be identical
/// once timings are masked, and the images must have the same guest content
/// (`qemu-img compare`) and the same allocation (`qemu-img map`).
@Suite(.requires("qemu-img", "qemu-io"))
struct Qcow2IODifferentialTests {
  /// A command script on a fresh image, `IMG` standing for it in `image`.
  struct Script: Sendable, CustomTestStringConvertible {
    var name: String
    var image = "IMG"
    var options = ["-f", "qcow2"]
    var commands: [String]
    var backingChain = false
    var createOptions: [String] = []
    var size = "1M"
    /// Completions of requests that run concurrently on a file print in an
    /// order that varies between QEMU runs; compare them as a multiset.
    var unorderedReports = false

    var testDescription: String { name }
  }

  static let scripts: [Script] = [
    Script(
      name: "aligned and unaligned reads and writes",
      commands: [
        "write -P 0x41 0 64k", "read -P 0x41 0 64k", "write -P 3 100 1000", "read -v 90 30",
        "write -P 4 65535 2", "read -v 65528 16", "writev -P 5 128k 4k 8k 1", "readv -v 128k 16 16",
        "read -P 0 512k 4k", "write -P 6 1000000 48576", "read -C 0 1M",
      ]),
    Script(
      name: "zero-writes with and without unmap",
      commands: [
        "write -P 1 0 256k", "write -z 0 64k", "write -z -u 64k 64k", "write -z 200k 8k",
        "write -z -u 300k 64k", "write -z 100 50", "read -P 0 0 128k", "read -P 1 200k 8k",
        "map", "alloc 0 1M",
      ]),
    Script(
      name: "discards",
      commands: [
        "write -P 2 0 256k", "discard 0 64k", "discard 64k 1000", "discard 128k 128k",
        "read -P 0 0 64k", "read -P 2 64k 64k", "map", "alloc 0 256k",
      ]),
    Script(
      name: "compressed writes",
      commands: [
        "write -c -P 7 0 64k", "write -c -P 8 64k 64k", "read -P 7 0 64k", "write -c 0 64k",
        "write -P 9 64k 1k", "read -P 8 65k 63k", "write -c 1 64k", "map", "alloc 0 1M",
      ]),
    Script(
      name: "VM state",
      commands: [
        "write -b -P 5 0 4k", "read -b -P 5 0 4k", "write -b -P 6 100k 64k",
        "read -b -P 6 100k 64k", "read -b -P 0 200k 1k", "map", "length",
      ]),
    Script(
      name: "many asynchronous requests and flushes",
      commands: [
        "aio_write -P 1 0 4k", "aio_write -P 2 64k 4k", "aio_write -P 3 128k 64k",
        "aio_write -P 4 300k 1k", "aio_flush", "flush", "aio_read -P 3 128k 64k",
        "aio_read -P 2 64k 4k", "aio_flush", "write -f -P 5 512k 4k", "flush",
      ],
      unorderedReports: true),
    Script(
      name: "truncate, length, info",
      commands: [
        "write -P 1 0 64k", "truncate 3M", "length", "info", "write -P 2 2M 64k",
        "read -P 2 2M 64k", "map", "truncate 1000000", "truncate 4M", "length",
      ]),
    Script(
      name: "backing chain: reads, partial writes, zero-writes, discards",
      commands: [
        "read -P 0x5a 512k 4k", "read -v 128k 32", "read -P 0x11 4k 4k", "write -P 1 130k 1k",
        "read -v 130k 16", "read -v 129k 16", "write -z 192k 64k", "write -z 256k 1k",
        "discard 320k 64k", "read -P 0 320k 64k", "write -P 2 600k 100k", "read -P 0 800k 4k",
        "map", "alloc 0 2M", "info",
      ],
      backingChain: true),
    Script(
      name: "backing chain: copy-on-read, compressed writes, truncate",
      options: ["-f", "qcow2", "-C"],
      commands: [
        "read -P 0x5a 512k 4k", "read -v 128k 32", "write -c -P 3 1M 64k", "map",
        "truncate 3M", "read -P 0 2M 4k", "write -P 4 1500k 8k", "map",
      ],
      backingChain: true),
    Script(
      name: "copy-on-read filter over blkdebug: reads populate the overlay, cor_write fails once",
      image:
        #"json:{"driver":"copy-on-read","file":{"driver":"blkdebug","inject-error":[{"event":"cor_write","errno":"5","once":"on"}],"image":{"driver":"qcow2","file":{"driver":"file","filename":"IMG"}}}}"#,
      options: [],
      commands: [
        "read -P 0x5a 512k 4k", "read -P 0x5a 512k 4k", "read -v 128k 16", "read -P 0x11 0 8k",
        "read -P 0 300k 64k",
      ],
      backingChain: true),
    Script(
      name: "4 KiB clusters and 8-bit refcounts",
      commands: [
        "write -P 1 0 200k", "write -P 2 1000 9000", "discard 64k 64k", "write -z -u 0 8k",
        "write -c -P 3 512k 4k", "aio_write -P 4 700k 4k", "aio_write -P 5 702k 4k", "aio_flush",
        "read -v 700k 16", "map",
      ],
      createOptions: ["-o", "cluster_size=4k,refcount_bits=8"]),
    Script(
      name: "version 2 (compat=0.10)",
      commands: [
        "write -P 1 0 128k", "write -z 0 64k", "discard 64k 64k", "read -P 0 0 128k", "map",
      ],
      createOptions: ["-o", "compat=0.10"]),
    // A v2 image cannot record a zero cluster: QEMU's driver declines a
    // discard over a backing file, which then succeeds without effect.
    Script(
      name: "version 2 over a backing chain: discards keep the data",
      commands: [
        "write -P 1 0 128k", "discard 0 128k", "read -P 1 0 128k", "discard 512k 64k",
        "read -P 0x5a 512k 4k", "map",
      ],
      backingChain: true,
      createOptions: ["-o", "compat=0.10"]),
    Script(
      name: "reopen with cache.direct and cache.no-flush",
      commands: [
        "write -P 1 0 64k", "reopen -c none", "write -P 3 1 100", "read -P 3 1 100",
        "write -P 4 100k 3", "reopen -o cache.direct=off", "write -P 5 200k 5",
        "reopen -c unsafe", "flush", "reopen -o cache.no-flush=off,cache.direct=on",
        "writev -P 6 513 1 1", "read -v 512 4", "reopen -o cache.direct=on,cache.no-flush=on",
        "write -c -P 7 512k 64k", "read -P 7 512k 64k", "reopen -c writethrough",
        "read -P 5 200k 5", "map",
      ]),
    Script(
      name: "reopen over a backing chain, raw image opened with O_DIRECT",
      options: ["-f", "qcow2", "-t", "none"],
      commands: [
        "read -P 0x5a 512k 4k", "write -P 1 130k 1k", "reopen -o cache.direct=off",
        "read -v 129k 16", "write -P 2 131k 1", "reopen -c directsync", "read -v 131k 4", "map",
      ],
      backingChain: true),
    // Races forced with breakpoints: two overlapping allocating writes to
    // one cluster, the first paused before its data write while the second
    // waits for the allocation, in both orders of issue.
    Script(
      name: "race: first write paused, second overlapping",
      image: "blkdebug::IMG",
      commands: [
        "break write_aio A", "aio_write -P 1 0 4k", "aio_write -P 2 2k 4k", "wait_break A",
        "resume A", "aio_flush", "read -v 0 16", "read -v 2k 16", "read -v 4k 16", "map",
      ]),
    Script(
      name: "race: the other order",
      image: "blkdebug::IMG",
      commands: [
        "break write_aio A", "aio_write -P 2 2k 4k", "aio_write -P 1 0 4k", "wait_break A",
        "resume A", "aio_flush", "read -v 0 16", "read -v 2k 16", "read -v 4k 16", "map",
      ]),
    Script(
      name: "race: breakpoint set after the first write was issued",
      image: "blkdebug::IMG",
      commands: [
        "aio_write -P 1 0 4k", "break write_aio B", "aio_write -P 2 2k 4k", "wait_break B",
        "resume B", "aio_flush", "read -v 0 16", "read -v 2k 16", "read -v 4k 16", "map",
      ]),
    Script(
      name: "race: copy-on-write from the backing file, first write paused in its copy",
      image: "blkdebug::IMG",
      commands: [
        "break cow_write A", "aio_write -P 1 130k 1k", "aio_write -P 2 133632 1k",
        "wait_break A", "resume A", "aio_flush", "read -v 129k 16", "read -v 130k 16",
        "read -v 131k 16", "read -v 132k 16", "map",
      ],
      backingChain: true),
    Script(
      name: "race: copy-on-write, second write paused before its data write",
      image: "blkdebug::IMG",
      commands: [
        "aio_write -P 1 130k 1k", "break write_aio B", "aio_write -P 2 129k 2k",
        "wait_break B", "resume B", "aio_flush", "read -v 128k 16", "read -v 129k 16",
        "read -v 130k 16", "read -v 131k 16", "map",
      ],
      backingChain: true),
  ]

  @Test(arguments: scripts)
  func sameOutputStatusAndImage(_ script: Script) async throws {
    let fixture = try ImageFixture()
    let top = fixture.path("top.qcow2")
    if script.backingChain {
      // A 768 KiB raw base (data at 128k and 512k), a middle qcow2 with data
      // of its own, and the 2 MiB top.
      let base = try fixture.makeImage("base.raw", size: 768 << 10)
      let middle = fixture.path("middle.qcow2")
      try await qemuImg(["create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", middle, "1M"])
      let filled = try await runProcess(
        "qemu-io", ["-f", "qcow2", middle, "-c", "write -P 0x11 0 8k", "-c", "write -z 900k 8k"])
      #expect(filled.status == 0)
      try await qemuImg(
        ["create", "-q", "-f", "qcow2"] + script.createOptions + [
          "-b", middle, "-F", "qcow2", top, "2M",
        ])
    } else {
      try await qemuImg(
        ["create", "-q", "-f", "qcow2"] + script.createOptions + [top, script.size])
    }
    let qemuImage = try fixture.copy(top, to: "qemu.qcow2")
    let spindleImage = try fixture.copy(top, to: "spindle.qcow2")
    func arguments(_ image: String) -> [String] {
      script.options + [script.image.replacingOccurrences(of: "IMG", with: image)]
        + script.commands.flatMap { ["-c", $0] }
    }
    let qemu = try await runProcess("qemu-io", arguments(qemuImage)).masked(replacing: qemuImage)
    let spindle = await runSpindle(["qemu-io"] + arguments(spindleImage))
      .masked(replacing: spindleImage)
    if script.unorderedReports {
      #expect(sortedLines(spindle.output) == sortedLines(qemu.output), "\(qemu)\n\(spindle)")
      #expect(spindle.error == qemu.error)
      #expect(spindle.status == qemu.status)
    } else if spindle != qemu && sortedLines(spindle.output) == sortedLines(qemu.output)
      && spindle.error == qemu.error && spindle.status == qemu.status
    {
      // The same reports in another order: two asynchronous requests whose
      // completions race (after a breakpoint is resumed, each ends with its
      // own flush under qemu-io's writethrough default). Seen only under
      // the load of a full run; recorded, not hidden.
      withKnownIssue("asynchronous reports in another order than qemu-io's", isIntermittent: true) {
        Issue.record("\(qemu)\n\(spindle)")
      }
    } else {
      #expect(spindle == qemu)
    }
    #expect(try await qemuImgStatus(["compare", "-q", qemuImage, spindleImage]) == 0)
    let qemuMap = try await runProcess("qemu-img", ["map", "--output=json", qemuImage])
    let spindleMap = try await runProcess("qemu-img", ["map", "--output=json", spindleImage])
    #expect(spindleMap.output == qemuMap.output)
    #expect(try await qemuImgStatus(["check", "-q", spindleImage]) == 0)
  }

  private func sortedLines(_ text: String) -> [String] {
    text.split(separator: "\n").map(String.init).sorted()
  }
}
