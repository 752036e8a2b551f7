import Foundation
import Testing

/// A test or suite trait for tests that mount a ``SmallFilesystem``
/// (`@Suite(.requiresMounting)`).
///
/// Whether mounting works is probed once (a 64 KiB tmpfs mounted and
/// unmounted). When it does not (not root, no `CAP_SYS_ADMIN`), the test is
/// skipped with the reason, unless `SPINDLE_REQUIRE_TOOLS=1` is set (CI runs
/// as root): then the test fails, so that a CI machine cannot pass the
/// full-disk tests by skipping them.
public struct FilesystemRequirement: TestTrait, SuiteTrait, TestScoping {
  /// Why mounting is impossible, or nil when it works (probed once).
  static let problem: String? = {
    do {
      try SmallFilesystem(kibibytes: 64).unmount()
      return nil
    } catch {
      return "mounting a tmpfs is impossible here (\(error)); the full-disk tests need root"
    }
  }()

  /// Where `SPINDLE_REQUIRE_TOOLS` is read from.
  let environment: [String: String]

  /// A requirement judged against `environment`.
  public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
    self.environment = environment
  }

  public var isRecursive: Bool { true }

  /// Skips the test when mounting is impossible and tools are not required.
  public func prepare(for test: Test) async throws {
    guard let problem = Self.problem, !ToolLocator.toolsRequired(environment: environment)
    else { return }
    try await ConditionTrait.disabled(Comment(rawValue: problem)).prepare(for: test)
  }

  /// Runs the test when mounting works; otherwise records the failure
  /// (`SPINDLE_REQUIRE_TOOLS=1`) or cancels it.
  public func provideScope(
    for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
  ) async throws {
    guard let problem = Self.problem else {
      try await function()
      return
    }
    if ToolLocator.toolsRequired(environment: environment) {
      Issue.record(
        Comment(rawValue: "\(problem), and \(ToolLocator.requireVariable)=1 requires them"))
    } else {
      try Test.cancel(Comment(rawValue: problem))
    }
  }
}

extension Trait where Self == FilesystemRequirement {
  /// The test mounts a ``SmallFilesystem``: skipped when mounting is
  /// impossible, failed instead when `SPINDLE_REQUIRE_TOOLS=1`.
  public static var requiresMounting: Self { FilesystemRequirement() }
}
