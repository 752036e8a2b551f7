import BlockTestSupport
import Foundation
import Testing

/// `qemu-img create` against Spindle's: output, errors, exit status and the
/// files left behind (byte for byte: Spindle lays out images as QEMU does).
@Suite struct DifferentialCreateTests {
  /// Every run starts with `old` (a small file), `base.raw` (2 MiB raw),
  /// `base.qcow2` (3 MiB qcow2) and an empty directory `sub`.
  static func setup(_ directory: String) async throws {
    try Data("hello\n".utf8).write(to: URL(fileURLWithPath: "\(directory)/old"))
    try await qemuImg(["create", "-q", "-f", "raw", "\(directory)/base.raw", "2M"])
    try await qemuImg(["create", "-q", "-f", "qcow2", "\(directory)/base.qcow2", "3M"])
    try FileManager.default.createDirectory(
      atPath: "\(directory)/sub", withIntermediateDirectories: false)
  }

  static let runs: [[String]] = [
    ["-f", "qcow2", "DIR/a.qcow2", "1G"],
    ["-f", "raw", "DIR/a.raw", "1M"],
    ["DIR/a.raw", "1000"],
    ["-f", "qcow2", "DIR/a", "1000"],
    ["-q", "-f", "qcow2", "DIR/a", "1M"],
    ["-f", "qcow2", "DIR/a", "1P"],
    ["-f", "qcow2", "-o", "cluster_size=2M,refcount_bits=64", "DIR/a", "100G"],
    ["-f", "qcow2", "-o", "cluster_size=512,refcount_bits=1", "DIR/a", "10G"],
    ["-f", "qcow2", "-o", "cluster_size=4k,lazy_refcounts=on,refcount_bits=8", "DIR/a", "1M"],
    ["-f", "qcow2", "-o", "compat=0.10", "DIR/a", "1M"],
    ["-f", "qcow2", "-o", "compat=v2", "-o", "cluster_size=1k", "DIR/a", "64k"],
    ["-f", "qcow2", "-o", "size=2M", "DIR/a"],
    ["-f", "qcow2", "-o", "preallocation=off,size=2M,lazy_refcounts=yes", "DIR/a"],
    ["-f", "qcow2", "-o", "compression_type=zstd", "DIR/a", "1M"],
    ["-f", "qcow2", "-o", "extended_l2=on", "DIR/a", "1G"],
    ["-f", "qcow2", "-o", "extended_l2=on,cluster_size=16k,compression_type=zstd", "DIR/a", "5G"],
    ["-f", "raw", "-o", "preallocation=off,nocow=off,extent_size_hint=1M", "DIR/a", "1M"],
    // Backing files: opened for their size and format unless -u.
    ["-f", "qcow2", "-b", "DIR/base.raw", "-F", "raw", "DIR/o.qcow2"],
    ["-f", "qcow2", "-b", "DIR/base.qcow2", "-F", "qcow2", "DIR/o.qcow2", "5M"],
    ["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "DIR/o.qcow2"],
    ["-f", "qcow2", "-b", "../base.raw", "-F", "raw", "DIR/sub/o.qcow2"],
    ["-f", "qcow2", "-o", "backing_file=base.raw,backing_fmt=raw", "DIR/o.qcow2"],
    ["-f", "qcow2", "-u", "-b", "nonexistent", "-F", "raw", "DIR/o.qcow2", "1M"],
    ["-f", "qcow2", "-b", "DIR/base.raw", "DIR/o.qcow2"],
    ["-f", "qcow2", "-u", "-b", "DIR/base.raw", "DIR/o.qcow2", "1M"],
    ["-f", "qcow2", "-b", "DIR/nonexistent", "-F", "raw", "DIR/o.qcow2", "1M"],
    ["-f", "qcow2", "-b", "DIR/base.raw", "-F", "qcow2", "DIR/o.qcow2"],
    ["-f", "qcow2", "-b", "DIR/o", "-F", "raw", "DIR/o"],
    ["-f", "qcow2", "-o", "backing_fmt=raw", "DIR/o", "64k"],
    ["-f", "raw", "-b", "DIR/base.raw", "DIR/o", "1M"],
    ["-f", "raw", "-F", "raw", "DIR/o", "1M"],
    // Format checks fail after the Formatting line and remove the file.
    ["-f", "qcow2", "-o", "compat=2", "DIR/old", "1M"],
    ["-f", "qcow2", "-o", "cluster_size=3k", "DIR/old", "1M"],
    ["-f", "qcow2", "-o", "refcount_bits=3", "DIR/old", "1M"],
    ["-f", "qcow2", "-o", "compat=0.10,lazy_refcounts=on", "DIR/old", "1M"],
    ["-f", "qcow2", "-o", "compat=0.10,refcount_bits=8", "DIR/old", "1M"],
    ["-f", "qcow2", "-o", "cluster_size=512", "DIR/old", "1P"],
    ["-f", "qcow2", "-o", "compat=0.10,compression_type=zstd", "DIR/old", "1M"],
    ["-f", "qcow2", "-o", "compression_type=lz4", "DIR/old", "1M"],
    ["-f", "qcow2", "-o", "compat=0.10,extended_l2=on", "DIR/old", "1M"],
    ["-f", "qcow2", "-o", "extended_l2=on,cluster_size=8k", "DIR/old", "1M"],
    ["-f", "qcow2", "-o", "data_file_raw=on", "DIR/old", "1M"],
    ["-f", "qcow2", "DIR/nonexistent/a", "1M"],
    ["-f", "raw", "DIR/old", "1M"],
    // Option errors, before anything is written.
    ["-f", "qcow2", "-o", "cluster_size=xyz", "DIR/old", "1M"],
    ["-f", "qcow2", "-o", "refcount_bits=x", "DIR/old", "1M"],
    ["-f", "qcow2", "-o", "lazy_refcounts=bogus", "DIR/old", "1M"],
    ["-f", "qcow2", "-o", "size=abc", "DIR/old"],
    ["-f", "qcow2", "-o", "size=2M", "DIR/old", "2M"],
    ["-f", "qcow2", "-o", "bogus=1", "DIR/old", "1M"],
    ["-f", "qcow2", "-o", "cluster_size=99999E", "DIR/old", "1M"],
    ["-f", "qcow2", "-o", "refcount_bits=99999999999999999999999", "DIR/old", "1M"],
    ["-f", "qcow2", "-o", "refcount_bits=-1", "DIR/old", "1M"],
    ["-f", "qcow2", "-o", "size=16E", "DIR/old"],
    ["-f", "qcow2", "-o", "", "DIR/old", "1M"],
    ["-f", "qcow2", "-o", "a,", "DIR/old", "1M"],
    ["-f", "bogus", "DIR/old", "1M"],
    ["-f", "qcow2", "DIR/old", "1Q"], ["-f", "qcow2", "DIR/old", "-1"],
    ["-f", "qcow2", "DIR/old", "99999E"], ["-f", "qcow2", "DIR/old", "0x10k"],
    ["-f", "qcow2", "DIR/old"], ["-f", "qcow2", "DIR/old", "1M", "extra"],
    [], ["-f"], ["-Z"], ["--bogus"],
    // Option help, with and without a file name (which adds the protocol's).
    ["-f", "qcow2", "-o", "help"], ["-f", "raw", "-o", "help"], ["-o", "help"],
    ["-f", "qcow2", "-o", "help", "DIR/a"], ["-f", "raw", "-o", "?", "DIR/a"],
    ["-f", "qcow2", "-o", "cluster_size=4k,help", "DIR/a", "1M"],
    ["-f", "bogus", "-o", "help"],
  ]

  @Test(.requires("qemu-img"), arguments: runs)
  func createMatches(_ arguments: [String]) async throws {
    let run = try await runImageCommand(["create"] + arguments, setup: Self.setup)
    #expect(run.spindle == run.qemu, "\(run)")
    let names = try run.fileNames()
    #expect(try run.spindleFileNames() == names)
    for name in names where name != "sub" {
      #expect(run.sameBytes(name), "\(name) differs")
    }
    for name in try FileManager.default.contentsOfDirectory(atPath: "\(run.qemuDirectory)/sub") {
      #expect(run.sameBytes("sub/\(name)"), "sub/\(name) differs")
    }
  }

  /// Images Spindle creates pass qemu-img check.
  @Test(.requires("qemu-img"))
  func createdImagesPassCheck() async throws {
    let run = try await runImageCommand(
      ["create", "-f", "qcow2", "-o", "cluster_size=4k", "DIR/a", "3G"], setup: Self.setup)
    #expect(run.spindle.status == 0)
    let check = try await run.checkSpindleImage("a")
    #expect(check.status == 0, "\(check)")
    #expect(check.output.contains("No errors were found on the image."))
  }
}
