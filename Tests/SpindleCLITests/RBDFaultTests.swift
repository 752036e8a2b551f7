import BlockTestSupport
import Foundation
import Testing

/// Failures reaching RBD images, with QEMU 7.2's rbd driver as the oracle:
/// the same messages and statuses, in bounded time, and nothing written.
@Suite(.requiresCeph("qemu-img", "qemu-io"))
struct RBDFaultTests {
  @Test func missingPoolOrImage() async throws {
    try await RBDImages.with { images in
      _ = try await images.create("a", size: "1M")
      for arguments in [
        ["info", "-f", "raw", "rbd:\(images.prefix)-nopool/x"],
        ["info", "-f", "raw", images.filename("missing")],
        ["info", "--image-opts", "driver=rbd,pool=\(images.pool),image=\(images.name("missing"))"],
        ["info", "--image-opts", "driver=rbd,pool=\(images.pool)"],
        ["info", "-f", "raw", "rbd:\(images.pool)"],
        ["info", "-f", "raw", "\(images.filename("a")):novalue"],
        ["info", "-f", "raw", "\(images.filename("a")):no_such_option=1"],
        ["info", "-f", "raw", "\(images.filename("a")):conf=/nonexistent.conf"],
        ["info", "-f", "raw", "rbd:\(images.pool)/nons/\(images.name("a"))"],
        ["convert", "-f", "raw", "-O", "raw", images.filename("missing"), "/dev/null"],
      ] {
        let (spindle, qemu) = try await runBoth("qemu-img", arguments)
        #expect(spindle == qemu, "\(arguments)")
        #expect(spindle.status != 0)
      }
    }
  }

  /// A wrong key: cephx refuses it (both tools report the same error).
  @Test func wrongKey() async throws {
    try await RBDImages.with { images in
      let image = try await images.create("a", size: "1M")
      // A well-formed key that is not the admin's.
      let key = "AQBZQ2FlAAAAABAAm4kVvKXjhkWyQDBg3oa3Xw=="
      let name = "\(image):id=admin:key=\(key):client_mount_timeout=5"
      let (spindle, qemu) = try await runBoth("qemu-img", ["info", "-f", "raw", name])
      #expect(spindle == qemu)
      #expect(spindle.status == 1)
      let (writeSpindle, writeQEMU) = try await runBoth(
        "qemu-io", ["-f", "raw", "-c", "write 0 4k", name])
      #expect(writeSpindle == writeQEMU)
    }
  }

  /// No monitor where the configuration points (a port nothing listens
  /// on, as after the mon stopped): with `client_mount_timeout=5` both
  /// tools give up after about 5 s with the same error.
  @Test func monitorUnreachable() async throws {
    try await RBDImages.with { images in
      let name =
        "\(images.filename("a")):mon_host=127.0.0.1\\:40698:client_mount_timeout=5:conf=/dev/null"
      let start = ContinuousClock.now
      let (spindle, qemu) = try await runBoth("qemu-img", ["info", "-f", "raw", name])
      #expect(spindle == qemu)
      #expect(spindle.status == 1)
      // Two runs of about 5 s each, far below a hang.
      #expect(ContinuousClock.now - start < .seconds(60))
    }
  }
}
