import BlockTestSupport
import Foundation
import Testing

/// The one tool locator every test target uses, and what a missing tool
/// does to a test: skipped with the reason, or failed under
/// `SPINDLE_REQUIRE_TOOLS=1`.
struct ToolLocatorTests {
  static let absent = "spindle-test-no-such-tool"

  @Test func findsAToolOnPathAndNotAMissingOne() {
    #expect(ToolLocator.path(of: "sh")?.hasSuffix("/sh") == true)
    #expect(ToolLocator.path(of: Self.absent) == nil)
    #expect(ToolLocator.path(of: "") == nil)
    #expect(ToolLocator.path(of: "bin/sh") == nil)
  }

  /// A tool outside `PATH` is still found in the system directories, as the
  /// old `/usr/bin`-only lookup found it.
  @Test func searchesSystemDirectoriesAfterPath() {
    #expect(ToolLocator.path(of: "sh", environment: ["PATH": "/nonexistent"]) != nil)
  }

  @Test func missingToolSkipsWithItsName() {
    let requirement = ToolRequirement(tools: ["sh", Self.absent], environment: [:])
    #expect(requirement.missing == [Self.absent])
    #expect(requirement.outcome == .skip("\(Self.absent) is not installed"))
  }

  @Test func missingToolFailsWhenToolsAreRequired() {
    let requirement = ToolRequirement(
      tools: [Self.absent], environment: ["SPINDLE_REQUIRE_TOOLS": "1"])
    guard case .fail(let message) = requirement.outcome else {
      Issue.record("expected a failure, got \(requirement.outcome)")
      return
    }
    #expect(message.contains(Self.absent))
    #expect(message.contains("SPINDLE_REQUIRE_TOOLS=1"))
    // Any other value does not require.
    let lenient = ToolRequirement(tools: [Self.absent], environment: ["SPINDLE_REQUIRE_TOOLS": "0"])
    #expect(lenient.outcome == .skip("\(Self.absent) is not installed"))
  }

  @Test func presentToolsRun() {
    let requirement = ToolRequirement(
      tools: ["sh"], environment: ["SPINDLE_REQUIRE_TOOLS": "1"])
    #expect(requirement.outcome == .run)
  }

  /// The trait itself: a required missing tool records an issue and never
  /// runs the test's body; an optional one throws the skip from `prepare`.
  @Test func traitFailsOrSkipsWithoutRunningTheBody() async throws {
    let test = try #require(Test.current)
    let required = ToolRequirement(
      tools: [Self.absent], environment: ["SPINDLE_REQUIRE_TOOLS": "1"])
    try await required.prepare(for: test)
    let ran = Flag()
    await withKnownIssue {
      try await required.provideScope(for: test, testCase: nil) { await ran.set() }
    }
    #expect(await !ran.value)

    let optional = ToolRequirement(tools: [Self.absent], environment: [:])
    await #expect(throws: (any Error).self) { try await optional.prepare(for: test) }

    let present = ToolRequirement(tools: ["sh"], environment: [:])
    try await present.prepare(for: test)
    try await present.provideScope(for: test, testCase: nil) { await ran.set() }
    #expect(await ran.value)
  }
}

/// Whether a closure ran.
private actor Flag {
  private(set) var value = false
  func set() { value = true }
}
