import BlockTestSupport
import Foundation
import Testing

/// A persistent error injected on a qcow2 metadata write: QEMU's caches keep
/// the table dirty and its close reports "Failed to flush the L2 table
/// cache" and "Failed to flush the refcount block cache"; `spindle io` must
/// print the same lines, and nothing when the error fired once and the
/// retry on close succeeds. `refblock_alloc` fires on every refcount update,
/// so an injection there fails the first allocating write.
@Suite(.requires("qemu-img", "qemu-io"))
struct Qcow2CloseFlushDifferentialTests {
  /// An injected error: the event and whether it fires once.
  struct Injection: Sendable, CustomTestStringConvertible {
    var event: String
    var once: Bool

    var testDescription: String { "\(event) once=\(once ? "on" : "off")" }
  }

  static let injections = ["l2_update", "refblock_update_part", "refblock_alloc", "flush_to_disk"]
    .flatMap { event in [false, true].map { Injection(event: event, once: $0) } }

  @Test(arguments: injections)
  func closeReportsMatch(_ injection: Injection) async throws {
    let fixture = try ImageFixture()
    let base = fixture.path("base.qcow2")
    try await qemuImg(["create", "-q", "-f", "qcow2", base, "1M"])
    let qemuImage = try fixture.copy(base, to: "qemu.qcow2")
    let spindleImage = try fixture.copy(base, to: "spindle.qcow2")
    func blkdebug(_ image: String) -> String {
      #"json:{"driver":"qcow2","file":{"driver":"blkdebug","image.filename":""# + image
        + #"","inject-error":[{"event":""# + injection.event + #"","errno":"5","once":""#
        + (injection.once ? "on" : "off") + #""}]}}"#
    }
    let commands = ["write 0 64k", "write 128k 4k", "discard 0 64k"].flatMap { ["-c", $0] }
    let qemu = try await runProcess("qemu-io", [blkdebug(qemuImage)] + commands)
      .masked(replacing: qemuImage)
    let spindle = await runSpindle(["qemu-io", blkdebug(spindleImage)] + commands)
      .masked(replacing: spindleImage)
    #expect(spindle.error == qemu.error, "\(qemu)\n\(spindle)")
    #expect(spindle.status == qemu.status, "\(qemu)\n\(spindle)")
    if injection.event != "flush_to_disk" {
      // Spindle flushes where QEMU's write-back caches do not, so an
      // injected flush error fails more of its requests.
      #expect(spindle.output == qemu.output, "\(qemu)\n\(spindle)")
    }
    let check = try await qemuImgStatus(["check", "-f", "qcow2", spindleImage])
    #expect(check == 0 || check == 3, "qemu-img check found corruption")
  }
}
