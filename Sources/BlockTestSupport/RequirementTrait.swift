import Testing

/// A trait whose test runs, is skipped or fails according to an
/// ``ToolRequirement/Outcome`` (``ToolRequirement``, ``CephRequirement``):
/// skipped as `.disabled(reason)` is when something is missing, failed with
/// a recorded issue instead when `SPINDLE_REQUIRE_TOOLS=1`.
public protocol RequirementTrait: TestTrait, SuiteTrait, TestScoping {
  /// Whether the test runs, is skipped or fails.
  var outcome: ToolRequirement.Outcome { get }
}

extension RequirementTrait {
  public var isRecursive: Bool { true }

  /// Skips the test (as `.disabled(reason)` does) when the outcome is a skip.
  public func prepare(for test: Test) async throws {
    guard case .skip(let reason) = outcome else { return }
    let skip: ConditionTrait = .disabled(Comment(rawValue: reason))
    try await skip.prepare(for: test)
  }

  /// Runs the test when the outcome is to run; otherwise records the failure
  /// and does not run it.
  public func provideScope(
    for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
  ) async throws {
    switch outcome {
    case .run:
      try await function()
    case .fail(let message):
      Issue.record(Comment(rawValue: message))
    case .skip(let reason):
      // Only reached if ``prepare(for:)`` did not skip the test already.
      try Test.cancel(Comment(rawValue: reason))
    }
  }
}

extension ToolRequirement.Outcome {
  /// Runs when nothing is `missing`; otherwise skips with that reason, or
  /// fails with it when `environment` requires the tools.
  static func judging(missing reason: String?, environment: [String: String]) -> Self {
    guard let reason else { return .run }
    if ToolLocator.toolsRequired(environment: environment) {
      return .fail("\(reason), and \(ToolLocator.requireVariable)=1 requires it")
    }
    return .skip(reason)
  }
}
