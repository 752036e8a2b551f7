import BlockCore
import BlockTestSupport
import Foundation
import Testing

@testable import BlockDrivers

/// Damaged and malicious qcow2 images (``HostileImage/all``): each is refused
/// with a clear error, QEMU's words where QEMU refuses it the same way, or
/// opens and then fails requests cleanly; none crashes, hangs, allocates in
/// proportion to a header field rather than to the file, or lets a write
/// land on the header.
@Suite("qcow2 hostile images", .timeLimit(.minutes(10)))
@BlockActor
struct Qcow2HostileImageTests {
  let scratch: ScratchDirectory

  init() throws { scratch = try ScratchDirectory() }

  /// Writes the hostile image and returns its path.
  func make(_ image: HostileImage) async throws -> String {
    let basePath = scratch.file("base-\(image.name).qcow2")
    let layout = try await HostileImage.base(at: basePath)
    var bytes = try contents(of: basePath)
    image.damage(&bytes, layout)
    let path = scratch.file("\(image.name).qcow2")
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    return path
  }

  @Test("each hostile image gives a clear error or clean failures", arguments: HostileImage.all)
  func hostile(_ image: HostileImage) async throws {
    let path = try await make(image)
    let original = try contents(of: path)
    let opened: BlockNode
    do {
      opened = try await openQcow2(path, readOnly: false)
    } catch let error as BlockError {
      guard case .refusedAtOpen(let message, let likeQEMU) = image.outcome else {
        // Refusing an image that may open is allowed, with a message.
        #expect(!"\(error)".isEmpty)
        return
      }
      #expect("\(error)".contains(message), "\(image.name): \(error)")
      if likeQEMU && ToolRequirement.isAvailable("qemu-img") {
        let qemu = try await QEMUTools.run(QEMUTools.qemuImg, ["info", path])
        #expect(qemu.status != 0)
        #expect(
          qemu.output.contains("Could not open '\(path)': \(message)"),
          "qemu-img says: \(qemu.output)")
      }
      return
    }
    if case .refusedAtOpen(let message, _) = image.outcome {
      await opened.close()
      Issue.record("\(image.name) opened; expected \(message)")
      return
    }
    var failures: [String] = []
    func attempt(_ what: String, _ body: () async throws -> Void) async {
      do { try await body() } catch let error as BlockError {
        failures.append("\(what): \(error)")
      } catch {
        Issue.record("\(image.name): \(what) threw a non-BlockError \(error)")
      }
    }
    for offset in stride(from: Int64(0), to: opened.length, by: 65536) {
      await attempt("read \(offset)") { _ = try await opened.read(at: offset, count: 65536) }
    }
    await attempt("allocating write") {
      try await opened.write(at: 512 << 10, bytes: [UInt8](repeating: 0x44, count: 4096))
    }
    await attempt("in-place write") {
      try await opened.write(at: 0, bytes: [UInt8](repeating: 0x55, count: 512))
    }
    await attempt("flush") { try await opened.flush() }
    await opened.close()
    let after = try contents(of: path)
    #expect(
      after.prefix(72) == original.prefix(72),
      "\(image.name): the header's fixed fields were overwritten; failures: \(failures)")
  }

  /// Damage that must be caught before the write lands: writes through a
  /// corrupt table fail instead of overwriting the structure.
  @Test(
    "writes never land on metadata",
    arguments: [
      "l2-table-is-l1-table", "l2-table-is-refcount-table", "data-cluster-is-l1-table",
      "data-cluster-is-refcount-table", "refcount-block-is-refcount-table",
      "refcount-block-in-header", "refcount-block-past-eof", "refcounts-all-free",
    ])
  func corruptTablesRefuseWrites(_ name: String) async throws {
    let image = try #require(HostileImage.all.first { $0.name == name })
    let path = try await make(image)
    let original = try contents(of: path)
    let node = try await openQcow2(path, readOnly: false)
    await #expect(throws: BlockError.self) {
      try await node.write(at: 0, bytes: [UInt8](repeating: 0x55, count: 512))
      try await node.write(at: 512 << 10, bytes: [UInt8](repeating: 0x44, count: 4096))
    }
    await node.close()
    let after = try contents(of: path)
    let layout = try Qcow2Header.parse(after, fileLength: Int64(after.count))
    let l1 = Int(layout.l1TableOffset)
    let table = Int(layout.refcountTableOffset)
    // Nothing in the header changes but, at most, the corrupt bit (incompatible
    // feature bit 1, the last byte of the field at 72) that a caught write sets.
    var header = Array(after.prefix(512))
    header[79] &= ~2
    #expect(header == Array(original.prefix(512)), "header")
    #expect(after[l1..<l1 + 8] == original[l1..<l1 + 8], "first L1 entry")
    #expect(after[table..<table + 8] == original[table..<table + 8], "first refcount table entry")
  }
}
