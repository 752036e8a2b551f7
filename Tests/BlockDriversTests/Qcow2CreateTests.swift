import BlockCore
import BlockTestSupport
import Foundation
import SystemPackage
import Testing

@testable import BlockDrivers

/// One create configuration: Spindle's options and the qemu-img arguments
/// that must produce the same file.
struct CreateCase: Sendable, CustomStringConvertible {
  var options: Qcow2CreateOptions
  var qemuArguments: [String]
  var description: String { qemuArguments.joined(separator: " ") }

  init(
    _ size: Int64, _ qemuOptions: String = "",
    configure: (inout Qcow2CreateOptions) -> Void = { _ in }
  ) {
    var options = Qcow2CreateOptions(size: size)
    configure(&options)
    self.options = options
    qemuArguments = qemuOptions.isEmpty ? [] : ["-o", qemuOptions]
    if let backing = options.backingFile { qemuArguments += ["-u", "-b", backing] }
    if let format = options.backingFormat { qemuArguments += ["-F", format] }
    qemuArguments.append(String(size))
  }

  static let all: [CreateCase] = [
    CreateCase(1 << 20),
    CreateCase(0),
    CreateCase(1 << 40),
    CreateCase(3 << 20, "compat=0.10") { $0.compat = "0.10" },
    CreateCase(3 << 20, "cluster_size=512") { $0.clusterSize = 512 },
    CreateCase(16 << 20, "cluster_size=512") { $0.clusterSize = 512 },
    CreateCase(3 << 20, "cluster_size=4096") { $0.clusterSize = 4096 },
    CreateCase(3 << 20, "cluster_size=8192") { $0.clusterSize = 8192 },
    CreateCase(3 << 20, "cluster_size=2M") { $0.clusterSize = 2 << 20 },
    CreateCase(5 << 20, "refcount_bits=1") { $0.refcountBits = 1 },
    CreateCase(5 << 20, "refcount_bits=8,cluster_size=4096") {
      $0.refcountBits = 8
      $0.clusterSize = 4096
    },
    CreateCase(5 << 20, "refcount_bits=64,cluster_size=512") {
      $0.refcountBits = 64
      $0.clusterSize = 512
    },
    CreateCase(1 << 30, "lazy_refcounts=on") { $0.lazyRefcounts = true },
    CreateCase(1 << 30, "compression_type=zstd") { $0.compressionType = .zstd },
    CreateCase(1 << 30, "extended_l2=on") { $0.extendedL2 = true },
    CreateCase(100 << 30, "extended_l2=on,cluster_size=16384") {
      $0.extendedL2 = true
      $0.clusterSize = 16384
    },
    CreateCase(3 << 20, "compression_type=zstd,cluster_size=4096") {
      $0.compressionType = .zstd
      $0.clusterSize = 4096
    },
    // Metadata that outgrows the first refcount block.
    CreateCase(1 << 30, "cluster_size=512") { $0.clusterSize = 512 },
    CreateCase(256 << 20, "cluster_size=512,refcount_bits=64") {
      $0.clusterSize = 512
      $0.refcountBits = 64
    },
    CreateCase(4 << 40, "cluster_size=4096,refcount_bits=1") {
      $0.clusterSize = 4096
      $0.refcountBits = 1
    },
    CreateCase(2 << 20) {
      $0.backingFile = "base.qcow2"
      $0.backingFormat = "qcow2"
    },
    CreateCase(2 << 20, "compat=0.10,cluster_size=4096") {
      $0.compat = "0.10"
      $0.clusterSize = 4096
      $0.backingFile = "/some/where/base.raw"
      $0.backingFormat = "raw"
    },
  ]
}

/// Images Spindle creates are byte-for-byte those qemu-img creates, pass
/// `qemu-img check`, and open as empty disks.
@Suite("qcow2 create")
@BlockActor
struct Qcow2CreateTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  @Test(
    "the same bytes as qemu-img create",
    .requires("qemu-img"), arguments: CreateCase.all)
  func sameAsQemuImg(_ create: CreateCase) async throws {
    let reference = scratch.file("qemu.qcow2")
    try await QcowTools.img(
      ["create", "-q", "-f", "qcow2"] + create.qemuArguments.dropLast() + [
        reference, create.qemuArguments.last!,
      ])
    let path = scratch.file("spindle.qcow2")
    try await Qcow2Create.create(at: path, options: create.options)
    let expected = try contents(of: reference)
    let actual = try contents(of: path)
    #expect(actual.count == expected.count)
    let firstDifference = (0..<min(actual.count, expected.count)).first {
      actual[$0] != expected[$0]
    }
    #expect(firstDifference == nil, "files differ from byte \(firstDifference ?? -1)")
    if create.options.backingFile == nil {
      let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", path])
      #expect(check.status == 0, "\(check.output)")
      let node = try await openQcow2(path)
      #expect(node.length == create.options.size)
      #expect(node.clusterSize == create.options.clusterSize)
      if node.length > 0 {
        let count = Int(min(node.length, 1 << 20))
        #expect(
          try await node.read(at: node.length - Int64(count), count: count)
            == [UInt8](repeating: 0, count: count))
      }
      await node.close()
    }
  }

  @Test("invalid options are refused with QEMU's messages")
  func invalidOptions() async throws {
    let cases: [(Qcow2CreateOptions, String)] = [
      (
        {
          var o = Qcow2CreateOptions(size: 1 << 20)
          o.clusterSize = 1000
          return o
        }(),
        "Cluster size must be a power of two between 512 and 2048k"
      ),
      (
        {
          var o = Qcow2CreateOptions(size: 1 << 20)
          o.clusterSize = 4 << 20
          return o
        }(),
        "Cluster size must be a power of two between 512 and 2048k"
      ),
      (Qcow2CreateOptions(size: 1000), "Image size must be a multiple of 512 bytes"),
      (
        {
          var o = Qcow2CreateOptions(size: 1 << 20)
          o.refcountBits = 128
          return o
        }(),
        "Refcount width must be a power of two and may not exceed 64 bits"
      ),
      (
        {
          var o = Qcow2CreateOptions(size: 1 << 20)
          o.compat = "0.10"
          o.lazyRefcounts = true
          return o
        }(),
        "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"
      ),
      (
        {
          var o = Qcow2CreateOptions(size: 1 << 20)
          o.compat = "0.10"
          o.refcountBits = 64
          return o
        }(),
        "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"
      ),
      (
        {
          var o = Qcow2CreateOptions(size: 1 << 20)
          o.compat = "0.10"
          o.compressionType = .zstd
          return o
        }(),
        "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)"
      ),
      (
        {
          var o = Qcow2CreateOptions(size: 1 << 20)
          o.backingFormat = "raw"
          return o
        }(),
        "Backing format cannot be used without backing file"
      ),
    ]
    for (options, message) in cases {
      let path = scratch.file("bad.qcow2")
      let error = await expectBlockError {
        try await Qcow2Create.create(at: path, options: options)
      }
      #expect(error?.code == .invalidArgument)
      #expect(error?.message == message)
      #expect(!FileManager.default.fileExists(atPath: path))
    }
  }
}
