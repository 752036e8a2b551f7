import Foundation
import Testing

/// A test or suite trait for tests that mount a ``SmallFilesystem``
/// (`@Suite(.requiresMounting)`).
///
/// Whether mounting works is probed once (a 64 KiB tmpfs mounted and
/// unmounted). When it does not (not root, no `CAP_SYS_ADMIN` in a
/// container), the test is skipped with the reason printed, also under
/// `SPINDLE_REQUIRE_TOOLS=1`: the reliability issue allows the full-disk tests
/// to skip exactly where mounting is impossible, which is a property of the
/// machine, not a missing package `.ci/run` could install.
public struct FilesystemRequirement: TestTrait, SuiteTrait {
  /// Why mounting is impossible, or nil when it works (probed once).
  static let problem: String? = {
    do {
      try SmallFilesystem(kibibytes: 64).unmount()
      return nil
    } catch {
      return "mounting a tmpfs is impossible here (\(error)); the full-disk tests need root"
    }
  }()

  /// A requirement on mounting.
  public init() {}

  public var isRecursive: Bool { true }

  /// Skips the test, with the reason, when mounting is impossible.
  public func prepare(for test: Test) async throws {
    guard let problem = Self.problem else { return }
    print("Skipping \(test.name): \(problem)")
    try await ConditionTrait.disabled(Comment(rawValue: problem)).prepare(for: test)
  }
}

extension Trait where Self == FilesystemRequirement {
  /// The test mounts a ``SmallFilesystem``: skipped, with the reason, when
  /// mounting is impossible.
  public static var requiresMounting: Self { FilesystemRequirement() }
}
