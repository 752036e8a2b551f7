import BlockTestSupport
import Foundation
import Testing

/// Persistent bitmaps through qemu-io's `reopen -r` / `reopen -w`, against
/// the real qemu-io 7.2 (QEMU's `qcow2_reopen_bitmaps_ro` and
/// `qcow2_reopen_bitmaps_rw`): going read-only stores the bitmaps (a kill
/// then leaves them consistent), going read-write marks them in use again
/// (a kill then leaves them inconsistent) and later writes mark them; an
/// image opened read-only and reopened read-write keeps its bitmaps valid
/// and current; a read-only reopen that fails after the bitmaps were stored
/// leaves them read-only, so writes, zero-writes and discards fail with
/// EPERM until `reopen -w`. Both tools run as processes (`spindle` linked
/// as qemu-io) on copies of one image with enabled, disabled and in-use
/// bitmaps; the output, the image bytes, `info --output=json` and
/// `check` must be the same.
@Suite(
  .requires("qemu-io", "qemu-img"),
  .enabled(if: SpindleExecutable.path != nil, "the spindle executable was not built"))
struct DifferentialReopenBitmapTests {
  /// A case: the qemu-io arguments before the image, and whether the
  /// image's first bitmap is in use (left by a killed program).
  struct Case: Sendable, CustomTestStringConvertible {
    let name: String
    let arguments: [String]
    var firstInUse = false
    var testDescription: String { name }
  }

  static let cases: [Case] = [
    Case(
      name: "read-only between writes",
      arguments: [
        "-c", "write -P 1 0 64k", "-c", "reopen -r", "-c", "write 0 1", "-c", "reopen -w",
        "-c", "write -P 2 1M 4k", "-c", "write -z 2M 64k", "-c", "discard 3M 64k",
      ]),
    Case(
      name: "killed after a read-only reopen",
      arguments: ["-c", "write -P 1 0 64k", "-c", "reopen -r", "-c", "sigraise 9"]),
    Case(
      name: "killed after a read-write reopen",
      arguments: [
        "-c", "write -P 1 0 64k", "-c", "reopen -r", "-c", "reopen -w", "-c", "write -P 2 4M 4k",
        "-c", "sigraise 9",
      ]),
    Case(
      name: "opened read-only, reopened read-write",
      arguments: ["-r", "-c", "reopen -w", "-c", "write -P 3 5M 8k", "-c", "write 0 512"]),
    Case(
      name: "opened read-only, reopened read-write, killed",
      arguments: ["-r", "-c", "reopen -w", "-c", "write -P 3 5M 8k", "-c", "sigraise 9"]),
    Case(
      name: "a failed read-only reopen leaves the bitmaps read-only",
      arguments: [
        "-c", "write -P 1 0 4k", "-c", "reopen -r -o file.foo=bar", "-c", "write 64k 4k",
        "-c", "write -z 128k 4k", "-c", "discard 0 64k", "-c", "reopen -w",
        "-c", "write -P 4 6M 4k",
      ]),
    Case(
      name: "a read-only reopen failing before the store",
      arguments: [
        "-c", "reopen -r -o lazy-refcounts=bad", "-c", "write -P 5 64k 4k", "-c", "reopen -r",
        "-c", "reopen -r", "-c", "reopen -w", "-c", "reopen -w", "-c", "write -P 6 7M 4k",
      ]),
    Case(
      name: "an in-use bitmap stays inconsistent",
      arguments: [
        "-c", "write -P 1 0 64k", "-c", "reopen -r", "-c", "reopen -w", "-c", "write 1M 4k",
      ],
      firstInUse: true),
    Case(
      name: "an in-use bitmap, opened read-only",
      arguments: ["-r", "-c", "reopen -w", "-c", "write 1M 4k", "-c", "sigraise 9"],
      firstInUse: true),
  ]

  @Test(arguments: cases)
  func reopenedBitmapsMatchQEMU(_ testCase: Case) async throws {
    let fixture = try ImageFixture()
    let base = fixture.path("base.qcow2")
    try await qemuImg(["create", "-q", "-f", "qcow2", base, "8M"])
    try await qemuImg(["bitmap", "--add", base, "b0"])
    try await qemuImg(["bitmap", "--add", "-g", "4k", "--disable", base, "b1"])
    try await qemuImg(["bitmap", "--add", "-g", "512", base, "b2"])
    try await DifferentialBitmapTests.io("write -P 9 2M 128k", base)
    if testCase.firstInUse { try DifferentialBitmapTests.markFirstBitmapInUse(base) }
    let qemuImage = try fixture.copy(base, to: "qemu.qcow2")
    let spindleImage = try fixture.copy(base, to: "spin.qcow2")
    let links = try SpindleExecutable.links()

    let qemu = try await runProcess("qemu-io", testCase.arguments + [qemuImage])
      .masked(replacing: qemuImage)
    let spindle = try await runProcess(
      "qemu-io", testCase.arguments + [spindleImage],
      environment: ["PATH": links.directory.path]
    ).masked(replacing: spindleImage)
    #expect(spindle == qemu)
    #expect(
      FileManager.default.contents(atPath: spindleImage)
        == FileManager.default.contents(atPath: qemuImage), "the images differ")
    for arguments in [["info", "--output=json"], ["check"]] {
      let results = try await [qemuImage, spindleImage].asyncMap { image in
        try await runProcess("qemu-img", arguments + [image]).masked(replacing: image)
      }
      #expect(results[1] == results[0], "\(arguments)")
    }
    let check = try await runProcess("qemu-img", ["check", spindleImage])
    #expect(check.status == 0, "\(check)")
  }
}

extension Array {
  fileprivate func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
    var results: [T] = []
    for element in self { results.append(try await transform(element)) }
    return results
  }
}
