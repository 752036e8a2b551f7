import BlockTestSupport
import Foundation
import Testing

/// `qemu-img amend` against Spindle's on identical copies of qcow2 images:
/// output, errors, exit status, and the amended images, byte for byte.
@Suite struct DifferentialAmendTests {
  /// Images `v3.qcow2` (data, a compressed and a zero cluster), `v2.qcow2`
  /// (compat=0.10), `overlay.qcow2` (backing file, zero clusters) and
  /// `snap.qcow2` (an internal snapshot), and a raw image.
  static func setup(_ directory: String) async throws {
    func path(_ name: String) -> String { "\(directory)/\(name)" }
    try await DifferentialCheckTests.setUpOnce(directory) { directory in
      for (name, options) in [
        ("v3.qcow2", [String]()), ("v2.qcow2", ["-o", "compat=0.10"]), ("snap.qcow2", []),
      ] {
        try await qemuImg(["create", "-q", "-f", "qcow2"] + options + [path(name), "16M"])
        try await DifferentialCheckTests.qemuIO(path(name), "write -P 7 0 384k")
        try await DifferentialCheckTests.qemuIO(path(name), "write -c -P 9 640k 64k")
      }
      try await DifferentialCheckTests.qemuIO(path("v3.qcow2"), "write -z 1M 64k")
      try await qemuImg(["snapshot", "-c", "one", path("snap.qcow2")])
      try await qemuImg([
        "create", "-q", "-f", "qcow2", "-b", "v3.qcow2", "-F", "qcow2", path("overlay.qcow2"),
      ])
      try await DifferentialCheckTests.qemuIO(path("overlay.qcow2"), "write -z 0 128k")
      try await DifferentialCheckTests.qemuIO(path("overlay.qcow2"), "write -P 3 256k 64k")
      try await qemuImg(["create", "-q", "-f", "raw", path("r.raw"), "1M"])
    }
  }

  static let runs: [[String]] = [
    ["-o", "lazy_refcounts=on", "DIR/v3.qcow2"], ["-o", "lazy_refcounts=off", "DIR/v3.qcow2"],
    ["-o", "compat=0.10", "DIR/v3.qcow2"], ["-o", "compat=v2", "DIR/overlay.qcow2"],
    ["-o", "compat=1.1", "DIR/v2.qcow2"], ["-o", "compat=1.1,lazy_refcounts=on", "DIR/v2.qcow2"],
    ["-o", "lazy_refcounts=on", "DIR/v2.qcow2"], ["-o", "refcount_bits=8", "DIR/v2.qcow2"],
    ["-o", "refcount_bits=8", "DIR/v3.qcow2"], ["-o", "refcount_bits=64", "DIR/v3.qcow2"],
    ["-o", "refcount_bits=1", "DIR/v3.qcow2"], ["-o", "refcount_bits=1", "DIR/snap.qcow2"],
    ["-o", "refcount_bits=64", "DIR/snap.qcow2"], ["-p", "-o", "compat=0.10", "DIR/snap.qcow2"],
    ["-o", "refcount_bits=3", "DIR/v3.qcow2"],
    ["-o", "compat=0.10,refcount_bits=8", "DIR/v3.qcow2"],
    ["-o", "compat=1.1", "-o", "refcount_bits=4", "DIR/v2.qcow2"],
    ["-o", "size=32M", "DIR/v3.qcow2"], ["-o", "compat=2", "DIR/v3.qcow2"],
    ["-o", "cluster_size=4k", "DIR/v3.qcow2"], ["-o", "extended_l2=on", "DIR/v3.qcow2"],
    ["-o", "foo=bar", "DIR/v3.qcow2"], ["-o", "backing_file=x", "DIR/overlay.qcow2"],
    ["-o", "backing_file=v3.qcow2,backing_fmt=qcow2", "DIR/overlay.qcow2"],
    ["-o", "data_file=x", "DIR/v3.qcow2"], ["-o", "data_file_raw=on", "DIR/v3.qcow2"],
    ["-o", "encrypt.state=active", "DIR/v3.qcow2"], ["-o", "help", "DIR/v3.qcow2"],
    ["-f", "qcow2", "-o", "help"], ["-f", "raw", "-o", "help"], ["-o", "?", "DIR/r.raw"],
    ["-o", "size=2M", "DIR/r.raw"], ["DIR/v3.qcow2"], ["-o", "size=32M"],
    ["-o", ",size=32M", "DIR/v3.qcow2"], ["-t", "bogus", "-o", "size=32M", "DIR/v3.qcow2"],
    ["-p", "-o", "lazy_refcounts=on", "DIR/v3.qcow2"], ["-p", "-o", "compat=0.10", "DIR/v3.qcow2"],
    ["-p", "-o", "refcount_bits=8", "DIR/v3.qcow2"],
    ["-p", "-o", "compat=1.1,refcount_bits=2", "DIR/v2.qcow2"],
    ["-q", "-p", "-o", "lazy_refcounts=on", "DIR/v3.qcow2"], ["-Z", "DIR/v3.qcow2"],
    ["-o", "size=32M", "DIR/missing.qcow2"], ["-o", "size=8M", "DIR/v3.qcow2"],
    ["-o", "size=32M", "DIR/snap.qcow2"], ["-o", "size=1M", "DIR/snap.qcow2"],
  ]

  @Test(
    .requires("qemu-img", "qemu-io"),
    arguments: runs)
  func amendMatches(_ arguments: [String]) async throws {
    let run = try await runImageCommand(["amend"] + arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
    for name in try run.fileNames() {
      #expect(run.sameBytes(name), "\(name) differs")
    }
  }
}
