import BlockTestSupport
import Foundation
import Testing

/// RBD images of one test on the shared Ceph cluster (see
/// `Tests/ceph/ceph-single-node.sh`): uniquely named, so that the tests of
/// a run (all started at once) and the two runs of CI (debug, then
/// AddressSanitizer, on the same cluster) never meet, and removed at the end.
struct RBDImages {
  /// The pool the images are in.
  let pool = CephRequirement.pool
  /// The prefix that makes this test's names unique.
  let prefix = "sp-\(UUID().uuidString.prefix(8).lowercased())"

  /// The image name for `label` (no pool).
  func name(_ label: String) -> String { "\(prefix)-\(label)" }

  /// `rbd:POOL/NAME` for `label`.
  func filename(_ label: String) -> String { "rbd:\(pool)/\(name(label))" }

  /// Runs `body` with these images, then removes every image (and its
  /// snapshots) whose name has this test's prefix, whether `body` threw
  /// or not.
  static func with(_ body: (RBDImages) async throws -> Void) async throws {
    let images = RBDImages()
    do {
      try await body(images)
    } catch {
      await images.removeAll()
      throw error
    }
    await images.removeAll()
  }

  /// Removes this test's images: their snapshots (unprotected first) and
  /// then the images, in two passes so that a clone's parent goes after
  /// the clone.
  func removeAll() async {
    for _ in 0..<2 {
      guard let listed = try? await runProcess("rbd", ["ls", pool]) else { return }
      for name in listed.output.split(separator: "\n") where name.hasPrefix(prefix) {
        let image = "\(pool)/\(name)"
        if let snapshots = try? await runProcess("rbd", ["snap", "ls", image]) {
          for line in snapshots.output.split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ")
            guard fields.count > 1 else { continue }
            _ = try? await runProcess("rbd", ["snap", "unprotect", "\(image)@\(fields[1])"])
          }
        }
        _ = try? await runProcess("rbd", ["snap", "purge", "--no-progress", image])
        _ = try? await runProcess("rbd", ["rm", "--no-progress", image])
      }
    }
  }

  /// Runs `rbd ARGS` and requires it to succeed.
  func rbd(_ arguments: [String]) async throws -> String {
    let result = try await runProcess("rbd", arguments)
    try #require(result.status == 0, "rbd \(arguments): \(result)")
    return result.output
  }

  /// Runs qemu-img and requires it to succeed.
  func qemuImg(_ arguments: [String]) async throws {
    let result = try await runProcess("qemu-img", arguments)
    try #require(result.status == 0, "qemu-img \(arguments): \(result)")
  }

  /// Runs qemu-io with `commands` on `filename` (raw) and requires success.
  func qemuIO(_ filename: String, _ commands: [String], readOnly: Bool = false) async throws {
    let result = try await runProcess(
      "qemu-io",
      (readOnly ? ["-r"] : []) + ["-f", "raw"] + commands.flatMap { ["-c", $0] } + [filename])
    try #require(result.status == 0 && result.error.isEmpty, "qemu-io \(commands): \(result)")
  }

  /// Creates `label` with qemu-img (`size`, optional `-o` options).
  func create(_ label: String, size: String, options: String? = nil) async throws -> String {
    let filename = filename(label)
    try await qemuImg(
      ["create", "-q", "-f", "raw"] + (options.map { ["-o", $0] } ?? []) + [filename, size])
    return filename
  }
}

/// Runs the same tool invocation through spindle (a child process, under
/// the tool's name) and through QEMU's tool; returns both results with
/// timings masked and `replacing` (each name) replaced.
func runBoth(_ tool: String, _ arguments: [String], replacing names: [String] = []) async throws
  -> (spindle: ToolResult, qemu: ToolResult)
{
  let spindle = try await runSpindleProcess([tool] + arguments)
  let qemu = try await runProcess(tool, arguments)
  func clean(_ result: ToolResult) -> ToolResult {
    var result = result.masked()
    for name in names {
      result.output = result.output.replacingOccurrences(of: name, with: "NAME")
      result.error = result.error.replacingOccurrences(of: name, with: "NAME")
    }
    return result
  }
  return (clean(spindle), clean(qemu))
}
