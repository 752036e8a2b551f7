/// The role a child plays for its parent (QEMU's child classes).
public enum ChildRole: String, Sendable {
  /// The bytes a format interprets, or the node a filter passes requests to.
  case file
  /// The node unallocated ranges are read from.
  case backing
  /// An external data file (qcow2 `data_file`).
  case data
}

/// An edge of the graph: a child node, its role and whether the parent writes
/// through it (flushes propagate only to children that are written).
@BlockActor
public struct BlockChild {
  /// The child's role.
  public let role: ChildRole
  /// The child node.
  public let node: BlockNode
  /// Whether the parent writes to the child (file and data children of a
  /// writable node; never a backing child).
  public internal(set) var writable: Bool
}

/// Something that issues requests to a node: another node, or a backend.
/// Drained sections tell parents to stop issuing new requests.
@BlockActor
public protocol BlockParent: AnyObject {
  /// A drained section began on a child: stop issuing new requests until
  /// ``childDrainedEnd()``.
  func childDrainedBegin()
  /// A drained section on a child ended.
  func childDrainedEnd()
  /// Whether the parent has requests in flight (the drain waits for them).
  var hasRequestsInFlight: Bool { get }
}
