import BlockCore
import BlockTestSupport
import Foundation
import Testing

@testable import BlockDrivers

/// The qcow2 driver's maintenance entry points for qemu-img's commands:
/// ``Qcow2Driver/makeEmpty(_:)`` (commit), ``Qcow2Driver/changeBackingFile(_:name:format:)``
/// (rebase) and ``Qcow2Measure`` (measure), checked against qemu-img.
@Suite(
  "qcow2 maintenance",
  .requires("qemu-img", "qemu-io"))
@BlockActor
struct Qcow2MaintenanceTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  @Test("makeEmpty leaves every cluster to the backing file and a clean image")
  func makeEmpty() async throws {
    let base = scratch.file("base.qcow2")
    let top = scratch.file("top.qcow2")
    try await QcowTools.img(["create", "-q", "-f", "qcow2", base, "4M"])
    try await QcowTools.io(base, ["write -P 1 0 4M"])
    try await QcowTools.img(["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top])
    try await QcowTools.io(
      top, ["write -P 2 0 64k", "write -z 1M 128k", "write -P 3 3M 1000", "write -c -P 4 2M 64k"])
    let node = try await openQcow2(top, readOnly: false)
    let driver = try #require(node.driver as? Qcow2Driver)
    try await driver.makeEmpty(node)
    let (allocated, count) = try await node.isAllocated(offset: 0, bytes: node.length)
    #expect(!allocated && count == node.length)
    #expect(try await node.read(at: 3 << 20, count: 4) == [1, 1, 1, 1])
    await node.close()
    let check = try await QEMUTools.run(QEMUTools.qemuImg, ["check", top])
    #expect(check.status == 0, "\(check.output)")
    #expect(try await QcowTools.map(top).allSatisfy { $0.depth == 1 && $0.data })
  }

  @Test("changeBackingFile rewrites the header as qemu-img rebase -u does")
  func changeBackingFile() async throws {
    let mine = scratch.file("mine.qcow2")
    let theirs = scratch.file("theirs.qcow2")
    try await QcowTools.img([
      "create", "-q", "-f", "qcow2", "-u", "-b", "old", "-F", "raw", mine, "1M",
    ])
    try FileManager.default.copyItem(atPath: mine, toPath: theirs)
    for (name, format) in [("new-backing.img", "qcow2"), (nil, nil), ("x", "raw")]
      as [(String?, String?)]
    {
      var options = DriverOptions()
      options["driver"] = "qcow2"
      options["file.filename"] = mine
      var context = OpenContext()
      context.openBacking = false
      let node = try await ImageOpener.open(filename: nil, options: options, context: context)
      let driver = try #require(node.driver as? Qcow2Driver)
      try await driver.changeBackingFile(node, name: name, format: format)
      #expect(driver.header.backingFile == name && driver.header.backingFormat == format)
      await node.close()
      try await QcowTools.img(
        ["rebase", "-u", "-b", name ?? ""] + (format.map { ["-F", $0] } ?? []) + [theirs])
      #expect(try contents(of: mine) == contents(of: theirs), "\(name ?? "none")")
    }
  }

  @Test(
    "Qcow2Measure gives qemu-img measure's sizes for empty images",
    arguments: [
      ["--size", "1G"], ["--size", "1000", "-o", "cluster_size=512"],
      ["--size", "100G", "-o", "cluster_size=2M,refcount_bits=1"],
      ["--size", "7T", "-o", "extended_l2=on,refcount_bits=64"],
      ["--size", "3G", "-o", "preallocation=full,cluster_size=4k"],
    ])
  func measure(_ arguments: [String]) async throws {
    let output = try await QcowTools.img(["measure", "--output=json", "-O", "qcow2"] + arguments)
    let json = try #require(
      try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any])
    var options = Qcow2MeasureOptions()
    options.size = try #require(parseSize(arguments[1]))
    if let list = arguments.dropFirst(3).first {
      for item in list.split(separator: ",") {
        let parts = item.split(separator: "=").map(String.init)
        switch parts[0] {
        case "cluster_size": options.clusterSize = try #require(parseSize(parts[1]))
        case "refcount_bits": options.refcountBits = Int(parts[1]) ?? 0
        case "extended_l2": options.extendedL2 = parts[1] == "on"
        case "preallocation": options.preallocatesData = parts[1] == "full"
        default: Issue.record("unexpected option \(parts[0])")
        }
      }
    }
    let measured = try await Qcow2Measure.measure(options, source: nil)
    #expect(measured.required == (json["required"] as? NSNumber)?.int64Value)
    #expect(measured.fullyAllocated == (json["fully-allocated"] as? NSNumber)?.int64Value)
    #expect(measured.bitmaps == nil)
  }

  private func parseSize(_ text: String) -> Int64? {
    let units: [Character: Int64] = ["k": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
    if let unit = text.last, let scale = units[unit] {
      return Int64(text.dropLast()).map { $0 * scale }
    }
    return Int64(text)
  }
}
