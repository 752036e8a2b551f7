import Foundation
import Testing

/// A test or suite trait naming the external tools a test runs
/// (`@Suite(.requires("qemu-img", "qemu-io"))`).
///
/// When every tool is found by ``ToolLocator`` the test runs. When one is
/// missing, the test is skipped with the reason ("qemu-img is not
/// installed"), unless `SPINDLE_REQUIRE_TOOLS=1` is set: then the test fails
/// with a recorded issue naming the missing tools, so that a CI machine
/// without QEMU cannot pass by skipping every interoperability test.
public struct ToolRequirement: RequirementTrait {
  /// The tools the test needs.
  public let tools: [String]
  /// Where `PATH` and `SPINDLE_REQUIRE_TOOLS` are read from.
  let environment: [String: String]

  /// A requirement on `tools`, judged against `environment`.
  public init(
    tools: [String], environment: [String: String] = ProcessInfo.processInfo.environment
  ) {
    self.tools = tools
    self.environment = environment
  }

  /// What happens to a test with this requirement.
  public enum Outcome: Equatable, Sendable {
    /// Every tool is installed.
    case run
    /// A tool is missing: the test is skipped, with this reason.
    case skip(String)
    /// A tool is missing and tools are required: the test fails, with
    /// this message.
    case fail(String)
  }

  /// The tools ``ToolLocator`` does not find.
  public var missing: [String] {
    tools.filter { ToolLocator.path(of: $0, environment: environment) == nil }
  }

  /// Whether the test runs, is skipped or fails.
  public var outcome: Outcome {
    let missing = missing
    guard !missing.isEmpty else { return .run }
    let verb = missing.count == 1 ? "is" : "are"
    return .judging(
      missing: "\(missing.joined(separator: ", ")) \(verb) not installed", environment: environment)
  }
}

extension Trait where Self == ToolRequirement {
  /// The test runs `tools`: skipped when one is missing, failed instead when
  /// `SPINDLE_REQUIRE_TOOLS=1`.
  public static func requires(_ tools: String...) -> Self {
    ToolRequirement(tools: tools)
  }
}

extension ToolRequirement {
  /// For a test that also compares with `tool` when it is installed:
  /// whether it is. When it is missing and `SPINDLE_REQUIRE_TOOLS=1`, the
  /// current test fails (an issue is recorded at the caller).
  public static func isAvailable(
    _ tool: String, sourceLocation: SourceLocation = #_sourceLocation
  ) -> Bool {
    switch ToolRequirement(tools: [tool]).outcome {
    case .run:
      return true
    case .fail(let message):
      Issue.record(Comment(rawValue: message), sourceLocation: sourceLocation)
      return false
    case .skip:
      return false
    }
  }
}
