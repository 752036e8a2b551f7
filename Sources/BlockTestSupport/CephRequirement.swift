import Foundation
import Testing

/// A test or suite trait for the tests that need a Ceph cluster
/// (`@Suite(.requiresCeph("qemu-img"))`): the one `Tests/ceph/ceph-single-node.sh
/// start` brings up, found through the `CEPH_CONF` it exports.
///
/// The test runs when `CEPH_CONF` names a readable file and the tools it
/// names (with `rbd`, the cluster's own client) are installed. Otherwise it
/// is skipped with the reason, unless `SPINDLE_REQUIRE_TOOLS=1`: then it
/// fails, so that CI cannot pass without a cluster.
public struct CephRequirement: TestTrait, SuiteTrait, TestScoping {
  /// The variable naming the cluster's configuration file.
  public static let configVariable = "CEPH_CONF"
  /// The variable naming the cluster's RBD pool (`testpool` when unset).
  public static let poolVariable = "SPINDLE_CEPH_POOL"

  /// The tools the test runs besides the cluster.
  public let tools: [String]
  let environment: [String: String]

  /// A requirement on a cluster and `tools`, judged against `environment`.
  public init(
    tools: [String], environment: [String: String] = ProcessInfo.processInfo.environment
  ) {
    self.tools = tools
    self.environment = environment
  }

  /// The cluster's configuration file, when one is configured and readable.
  public static func configFile(
    environment: [String: String] = ProcessInfo.processInfo.environment
  ) -> String? {
    guard let path = environment[configVariable], !path.isEmpty,
      FileManager.default.isReadableFile(atPath: path)
    else { return nil }
    return path
  }

  /// The pool the tests create their images in.
  public static var pool: String {
    ProcessInfo.processInfo.environment[poolVariable] ?? "testpool"
  }

  /// Whether the test runs, is skipped or fails.
  public var outcome: ToolRequirement.Outcome {
    var reasons: [String] = []
    if Self.configFile(environment: environment) == nil {
      reasons.append(
        "no Ceph cluster (\(Self.configVariable) does not name a readable file; start one with "
          + "Tests/ceph/ceph-single-node.sh)")
    }
    let missing = ToolRequirement(tools: tools + ["rbd"], environment: environment).missing
    if !missing.isEmpty {
      reasons.append("\(missing.joined(separator: ", ")) not installed")
    }
    guard !reasons.isEmpty else { return .run }
    let reason = reasons.joined(separator: "; ")
    if ToolLocator.toolsRequired(environment: environment) {
      return .fail("\(reason), and \(ToolLocator.requireVariable)=1 requires it")
    }
    return .skip(reason)
  }

  public var isRecursive: Bool { true }

  /// Skips the test when the cluster or a tool is missing and tools are
  /// not required.
  public func prepare(for test: Test) async throws {
    guard case .skip(let reason) = outcome else { return }
    let skip: ConditionTrait = .disabled(Comment(rawValue: reason))
    try await skip.prepare(for: test)
  }

  /// Runs the test when everything is there; otherwise records the failure.
  public func provideScope(
    for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
  ) async throws {
    switch outcome {
    case .run:
      try await function()
    case .fail(let message):
      Issue.record(Comment(rawValue: message))
    case .skip(let reason):
      try Test.cancel(Comment(rawValue: reason))
    }
  }
}

extension Trait where Self == CephRequirement {
  /// The test needs the Ceph cluster and runs `tools`: skipped when one is
  /// missing, failed instead when `SPINDLE_REQUIRE_TOOLS=1`.
  public static func requiresCeph(_ tools: String...) -> Self {
    CephRequirement(tools: tools)
  }
}
