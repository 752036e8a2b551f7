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

  /// The options form with the key in a `--object secret` (`key-secret`)
  /// and the monitors as `server.N`: the right key (base64) opens the
  /// image, the same key given raw is the wrong key (QEMU base64-encodes
  /// the secret again), and a missing secret is named.
  @Test func keySecretMatchesQEMU() async throws {
    try await RBDImages.with { images in
      _ = try await images.create("a", size: "1M")
      let key = try await runProcess("ceph", ["auth", "get-key", "client.admin"]).output
      try #require(!key.isEmpty)
      let conf = try #require(CephRequirement.configFile())
      let monitor = try #require(
        try String(contentsOfFile: conf, encoding: .utf8).firstMatch(of: #/v1:127\.0\.0\.1:(\d+)/#))
      let options =
        "driver=rbd,pool=\(images.pool),image=\(images.name("a")),user=admin,conf=/dev/null,"
        + "server.0.host=127.0.0.1,server.0.port=\(monitor.1),key-secret=s0"
      for arguments in [
        ["info", "--object", "secret,id=s0,data=\(key),format=base64", "--image-opts", options],
        [
          "info", "--object", "secret,id=s0,data=\(key)", "--image-opts",
          options + ",auth-client-required.0=cephx,client_mount_timeout=5",
        ],
        ["info", "--image-opts", options],
      ] {
        let (spindle, qemu) = try await runBoth("qemu-img", arguments)
        #expect(spindle == qemu, "\(arguments)")
      }
    }
  }

  /// The cluster script, for tests that start a second cluster of their
  /// own (on ports of their own, never stopping the shared one's daemons).
  static let clusterScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("ceph/ceph-single-node.sh").path

  /// The monitor of a second cluster (never the shared one) stopped: with
  /// `client_mount_timeout=5` both tools fail to open in bounded time
  /// with the same error.
  @Test func monitorStopped() async throws {
    let script = Self.clusterScript
    let directory = "/tmp/spindle-ceph-mon-\(UUID().uuidString.prefix(8))"
    let environment = ["CEPH_DIR=\(directory)", "CEPH_PORT=26700", "CEPH_POOL=monpool"]
    func cluster(_ command: String) async throws -> ToolResult {
      try await runProcess("/usr/bin/env", environment + [script, command])
    }
    // The daemons detach: they are stopped whatever happens.
    do {
      try await Self.compareWithMonitorStopped(directory: directory, cluster: cluster)
    } catch {
      _ = try? await cluster("stop")
      throw error
    }
    _ = try await cluster("stop")
  }

  /// A second cluster's OSD (bluestore: memstore would lose everything)
  /// killed after flushed writes: with `rados_osd_op_timeout=10` both
  /// tools fail the next open with the same error in bounded time; once the
  /// OSD is restarted the flushed data is all there and writes work again.
  @Test func osdKilledAndRestarted() async throws {
    let environment = [
      "CEPH_DIR=/tmp/spindle-ceph-osd-\(UUID().uuidString.prefix(8))", "CEPH_PORT=26900",
      "CEPH_POOL=osdpool", "CEPH_STORE=bluestore", "CEPH_BYTES=1073741824",
    ]
    func cluster(_ command: String) async throws -> ToolResult {
      try await runProcess("/usr/bin/env", environment + [Self.clusterScript, command])
    }
    do {
      try await Self.compareWithOSDKilled(
        directory: String(environment[0].dropFirst(9)), cluster: cluster)
    } catch {
      _ = try? await cluster("stop")
      throw error
    }
    _ = try await cluster("stop")
  }

  private static func compareWithOSDKilled(
    directory: String, cluster: (String) async throws -> ToolResult
  ) async throws {
    let started = try await cluster("start")
    try #require(started.status == 0, "\(started)")
    let conf = "conf=\(directory)/ceph.conf:rados_osd_op_timeout=10"
    let images = ["rbd:osdpool/s:\(conf)", "rbd:osdpool/q:\(conf)"]
    for image in images {
      let created = try await runProcess("qemu-img", ["create", "-q", "-f", "raw", image, "4M"])
      try #require(created.status == 0, "\(created)")
    }
    // Acknowledged and flushed before the kill.
    let before = ["-c", "write -P 0x41 0 1M", "-c", "flush"]
    let spindleBefore = try await runSpindleProcess(
      ["qemu-io", "-f", "raw"] + before + [images[0]])
    let qemuBefore = try await runProcess("qemu-io", ["-f", "raw"] + before + [images[1]])
    #expect(spindleBefore.status == 0 && qemuBefore.status == 0, "\(spindleBefore)")
    let killed = try await cluster("kill-osd")
    try #require(killed.status == 0, "\(killed)")
    let after = ["-c", "write -P 0x42 1M 1M", "-c", "flush"]
    let start = ContinuousClock.now
    async let spindleAfter = runSpindleProcess(["qemu-io", "-f", "raw"] + after + [images[0]])
    async let qemuAfter = runProcess("qemu-io", ["-f", "raw"] + after + [images[1]])
    let (spindleFailed, qemuFailed) = try await (spindleAfter, qemuAfter)
    let spindleError = spindleFailed.error.replacingOccurrences(of: "osdpool/s", with: "osdpool/q")
      .replacingOccurrences(of: "header from s:", with: "header from q:")
    #expect(spindleError == qemuFailed.error, "\(spindleFailed) \(qemuFailed)")
    #expect(spindleFailed.status == qemuFailed.status)
    #expect(spindleFailed.status == 1 && spindleFailed.error.contains("Connection timed out"))
    #expect(ContinuousClock.now - start < .seconds(60))
    let restarted = try await cluster("start-osd")
    try #require(restarted.status == 0, "\(restarted)")
    let check = ["-c", "read -P 0x41 0 1M", "-c", "read -P 0 1M 1M", "-c", "write -P 0x43 2M 64k"]
    let spindleCheck = try await runSpindleProcess(["qemu-io", "-f", "raw"] + check + [images[0]])
    let qemuCheck = try await runProcess("qemu-io", ["-f", "raw"] + check + [images[1]])
    #expect(spindleCheck.masked() == qemuCheck.masked())
    #expect(spindleCheck.status == 0 && !spindleCheck.output.contains("verification failed"))
  }

  private static func compareWithMonitorStopped(
    directory: String, cluster: (String) async throws -> ToolResult
  ) async throws {
    let started = try await cluster("start")
    try #require(started.status == 0, "\(started)")
    let image = "rbd:monpool/img:conf=\(directory)/ceph.conf:client_mount_timeout=5"
    let created = try await runProcess("qemu-img", ["create", "-q", "-f", "raw", image, "1M"])
    try #require(created.status == 0, "\(created)")
    let (before, qemuBefore) = try await runBoth("qemu-img", ["info", "-f", "raw", image])
    #expect(before == qemuBefore && before.status == 0)
    let stopped = try await cluster("stop-mon")
    try #require(stopped.status == 0, "\(stopped)")
    let start = ContinuousClock.now
    let (spindle, qemu) = try await runBoth("qemu-img", ["info", "-f", "raw", image])
    #expect(spindle == qemu)
    #expect(spindle.status == 1 && spindle.error.contains("error connecting"))
    #expect(ContinuousClock.now - start < .seconds(60))
  }

  /// Two writers on one image at once, Spindle and qemu-io (QEMU accepts
  /// it; librbd's exclusive lock passes between them): both succeed and
  /// every write of each is there afterwards.
  @Test func secondWriterOnTheSameImage() async throws {
    try await RBDImages.with { images in
      let image = try await images.create("a", size: "8M")
      func commands(_ pattern: Int, _ base: Int) -> [String] {
        (0..<16).flatMap { ["-c", "write -P \(pattern) \(base + $0 * 256)k 64k", "-c", "flush"] }
      }
      async let spindle = runSpindleProcess(
        ["qemu-io", "-f", "raw"] + commands(0x51, 0) + [image])
      async let qemu = runProcess("qemu-io", ["-f", "raw"] + commands(0x71, 4096) + [image])
      let (spindleResult, qemuResult) = try await (spindle, qemu)
      #expect(spindleResult.status == 0 && spindleResult.error.isEmpty, "\(spindleResult)")
      #expect(qemuResult.status == 0 && qemuResult.error.isEmpty, "\(qemuResult)")
      var reads: [String] = []
      for index in 0..<16 {
        reads += ["read -P 0x51 \(index * 256)k 64k", "read -P 0x71 \(4096 + index * 256)k 64k"]
      }
      try await images.qemuIO(image, reads, readOnly: true)
    }
  }
}
