/// The live nodes of a process, for drain-all and for finding a node by
/// name (QEMU's `all_bdrv_states`).
///
/// A process holds one graph unless a task asks for a separate one:
/// nodes made while a task runs in ``withSeparateGraph(_:)`` belong to that
/// graph, and drain-all or a lookup by name in that task reaches them only.
/// Separate graphs are for users that run independent sets of nodes in one
/// process (and for tests, which run in parallel in one process): a drain-all
/// in one graph must not hold the requests of another — above all not when
/// a node of one is an NBD client of a server exporting a node of the
/// other, where holding the server's requests while waiting for the
/// client's never ends.
@BlockActor
public enum BlockGraph {
  /// The graph the current task's nodes belong to: a separate one inside
  /// ``withSeparateGraph(_:)``, the process's otherwise.
  static var current: Registry { separate ?? process }

  /// Runs `body` with a graph of its own: the nodes it (and the tasks it
  /// starts, which inherit task-local values) makes belong to that graph,
  /// and ``drainAllBegin()``, ``drainAll()`` and ``allNodes`` in it see
  /// them only.
  public static func withSeparateGraph<T>(_ body: @BlockActor () async throws -> T)
    async rethrows -> T
  {
    try await $separate.withValue(Registry()) { try await body() }
  }

  /// The nodes alive now in the current graph.
  public static var allNodes: [BlockNode] { current.liveNodes }

  /// Drains every node of the current graph (QEMU's
  /// `bdrv_drain_all_begin`): all parents stop issuing requests and the call
  /// returns when nothing is in flight anywhere in it. Pair it with
  /// ``drainAllEnd()``.
  public static func drainAllBegin() async {
    let graph = current
    let all = graph.liveNodes
    graph.drainedByDrainAll.append(contentsOf: all)
    for node in all { node.drainedBeginWithoutWaiting() }
    for node in all { await node.waitUntilIdle() }
  }

  /// Ends the current graph's drain-all section.
  public static func drainAllEnd() {
    let graph = current
    let drained = graph.drainedByDrainAll
    graph.drainedByDrainAll = []
    for node in drained { node.drainedEnd() }
  }

  /// Waits until nothing is in flight anywhere in the current graph.
  public static func drainAll() async {
    await drainAllBegin()
    drainAllEnd()
  }

  static func register(_ node: BlockNode) {
    current.register(node)
  }

  private static let process = Registry()
  @TaskLocal private static var separate: Registry?

  /// The nodes of one graph, held weakly.
  @BlockActor
  final class Registry {
    private var nodes: [WeakNode] = []
    fileprivate var drainedByDrainAll: [BlockNode] = []

    nonisolated init() {}

    fileprivate var liveNodes: [BlockNode] { nodes.compactMap(\.node) }

    fileprivate func register(_ node: BlockNode) {
      nodes.removeAll { $0.node == nil }
      nodes.append(WeakNode(node: node))
    }
  }

  private struct WeakNode {
    weak var node: BlockNode?
  }
}
