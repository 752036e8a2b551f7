import Foundation

/// Finds the external programs the interoperability tests run (`qemu-img`,
/// `qemu-io`, `qemu-nbd`, `nbdinfo`, ...), the one lookup every test target
/// uses: the directories of `PATH` first, then the usual system directories
/// (a test runner may start with a minimal `PATH`).
///
/// Whether a missing tool skips a test or fails it is decided by
/// ``ToolRequirement``.
public enum ToolLocator {
  /// The environment variable that, set to `1`, makes a missing tool a test
  /// failure instead of a skipped test (CI sets it: see `.ci/run`).
  public static let requireVariable = "SPINDLE_REQUIRE_TOOLS"

  /// Searched after `PATH`.
  static let systemDirectories = [
    "/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin",
  ]

  /// The absolute path of the executable `name`, or nil when it is not
  /// installed. `environment` supplies `PATH` (the process's by default).
  public static func path(
    of name: String, environment: [String: String] = ProcessInfo.processInfo.environment
  ) -> String? {
    guard !name.isEmpty, !name.contains("/") else { return nil }
    let path = environment["PATH"] ?? ""
    let directories = path.split(separator: ":").map(String.init) + systemDirectories
    for directory in directories where !directory.isEmpty {
      let candidate = "\(directory)/\(name)"
      if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    return nil
  }

  /// Whether `name` is installed.
  public static func isInstalled(_ name: String) -> Bool { path(of: name) != nil }

  /// Whether `environment` asks for missing tools to fail the tests
  /// (``requireVariable`` set to `1`).
  public static func toolsRequired(
    environment: [String: String] = ProcessInfo.processInfo.environment
  ) -> Bool {
    environment[requireVariable] == "1"
  }
}
