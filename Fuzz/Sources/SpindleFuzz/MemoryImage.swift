import BlockCore

@testable import BlockDrivers

/// A qcow2 image whose file is a ``MemoryDriver`` holding the fuzzer's bytes:
/// opened, checked and repaired without touching the host's files (backing
/// files are not opened; an external data file is an empty memory disk of
/// each open's own).
@BlockActor
final class MemoryImage {
  /// The image file's bytes.
  let file: MemoryDriver

  /// An image file holding `bytes`.
  init(_ bytes: [UInt8]) {
    file = MemoryDriver(size: Int64(bytes.count))
    file.populate(at: 0, bytes: bytes)
  }

  /// Whether the header is a version 3 header with the external data file bit.
  private func needsDataFile() async -> Bool {
    let node = BlockNode(name: "fuzz-probe", driver: file)
    guard (try? await node.open()) != nil, node.length >= 80,
      let header = try? await node.read(at: 0, count: 80)
    else { return false }
    await node.close()
    let version = header[4..<8].reduce(0) { $0 << 8 | UInt32($1) }
    let incompatible = header[72..<80].reduce(0) { $0 << 8 | UInt64($1) }
    return version >= 3 && incompatible & Qcow2Feature.externalDataFile != 0
  }

  /// The qcow2 node, or nil when the image is refused with a ``BlockError``
  /// (any other error is a finding).
  func open(readOnly: Bool, forCheck: Bool = false) async -> BlockNode? {
    var context = OpenContext(node: NodeOptions(readOnly: readOnly))
    context.openBacking = false
    context.forCheck = forCheck
    let dataOptions: DriverOptions? =
      await needsDataFile() ? DriverOptions(["driver": "memory", "size": "0"]) : nil
    let fileNode = BlockNode(name: "fuzz-file", driver: file)
    do {
      try await fileNode.open()
      return try await Qcow2Driver.open(
        over: fileNode, imagePath: nil, dataFileOptions: dataOptions, context: context)
    } catch is BlockError {
      return nil
    } catch {
      fuzzCheck(false, "open threw a non-BlockError: \(error)")
      return nil
    }
  }

  /// Opens the image for a check with `mode` and runs it; nil when the
  /// image does not open.
  func check(_ mode: Qcow2CheckMode) async -> Qcow2CheckResult? {
    guard let node = await open(readOnly: mode.isEmpty, forCheck: true) else { return nil }
    let result = await Self.check(node, mode)
    await node.close()
    return result
  }

  /// Runs a check on an open node; a thrown ``BlockError`` becomes the
  /// result's failure, as `qemu-img check` reports it.
  static func check(_ node: BlockNode, _ mode: Qcow2CheckMode) async -> Qcow2CheckResult {
    guard let driver = node.driver as? Qcow2Driver else {
      fuzzCheck(false, "a qcow2 open gave a \(type(of: node.driver)) node")
      return Qcow2CheckResult()
    }
    do {
      return try await driver.check(node, mode: mode)
    } catch let error as BlockError {
      var result = Qcow2CheckResult()
      result.failure = error
      return result
    } catch {
      fuzzCheck(false, "check threw a non-BlockError: \(error)")
      return Qcow2CheckResult()
    }
  }
}

extension Qcow2CheckResult {
  /// Whether the check completed and found nothing wrong.
  var isClean: Bool { failure == nil && checkErrors == 0 && corruptions == 0 && leaks == 0 }
  /// Whether the check completed and repaired everything it found.
  var repairedEverything: Bool {
    failure == nil && checkErrors == 0 && corruptions == corruptionsFixed && leaks == leaksFixed
  }
}
