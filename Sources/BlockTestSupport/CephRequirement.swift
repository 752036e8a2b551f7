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
public struct CephRequirement: RequirementTrait {
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
    return .judging(
      missing: reasons.isEmpty ? nil : reasons.joined(separator: "; "), environment: environment)
  }
}

extension Trait where Self == CephRequirement {
  /// The test needs the Ceph cluster and runs `tools`: skipped when one is
  /// missing, failed instead when `SPINDLE_REQUIRE_TOOLS=1`.
  public static func requiresCeph(_ tools: String...) -> Self {
    CephRequirement(tools: tools)
  }
}
