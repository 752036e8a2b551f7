import BlockCore
import BlockDrivers

@testable import SpindleCLI

/// The qemu-io command parser: each input line is run as a `spindle io`
/// command on a 1 MiB memory disk (commands that open host files, sleep,
/// raise signals or abort are skipped, and so are sizes of 16 MiB or more,
/// which qemu-io also allocates before the request is refused).
///
/// Invariants: every command returns 0 or a negative errno; the session
/// closes (every asynchronous request completes); nothing crashes or hangs.
enum QemuIOTarget {
  /// Commands the target never runs.
  static let skipped: Set<String> = [
    "open", "o", "reopen", "sleep", "sigraise", "abort", "wait_break",
  ]
  /// Lines per input.
  static let maximumLines = 32

  static func run(_ input: [UInt8]) {
    guard input.count <= 1 << 14 else { return }
    let text = String(decoding: input, as: UTF8.self)
    let lines = text.split(separator: "\n", omittingEmptySubsequences: true).prefix(maximumLines)
      .map(String.init).filter(isAllowed)
    runBlocking { await session(lines) }
  }

  static func isAllowed(_ line: String) -> Bool {
    let words = line.split(separator: " ").map(String.init)
    guard let name = words.first, !skipped.contains(name) else { return false }
    for word in words.dropFirst() {
      // Sizes and offsets, as `-P`/`-s` arguments and operands.
      if case .success(let size) = parseQEMUSize(word), size.value >= 16 << 20 { return false }
      if word.contains(where: { $0 == "*" }) { return false }
    }
    return true
  }

  @BlockActor
  static func session(_ lines: [String]) async {
    let console = Console.capture()
    let session = IOSession(
      console: console, programName: "qemu-io", misalign: false, imageOpts: false)
    var spec = ImageSpec()
    spec.format = "raw"
    spec.options = DriverOptions(["file.driver": "memory", "file.size": "1M"])
    guard await session.openImage(spec) else {
      fuzzCheck(false, "the memory disk does not open: \(console.error)")
      return
    }
    for line in lines where !session.quitRequested {
      let status = await session.execute(line)
      fuzzCheck(status <= 0 && status > -4096, "\(line) returned \(status)")
    }
    await session.closeImage()
  }
}
