import SystemPackage

/// A reopen of a node and the nodes below it as one transaction (QEMU's
/// `BlockReopenQueue` and `bdrv_reopen_multiple`): every node is prepared,
/// then every staged change is committed, or, when any prepare fails, every
/// prepared one is aborted so that the graph is left as it was.
@BlockActor
struct BlockReopenQueue {
  /// One node of the reopen (QEMU's `BlockReopenQueueEntry`).
  struct Entry {
    let node: BlockNode
    /// Every option the node will have: the given ones over what it
    /// inherits from its parent, over its current state and open options.
    let options: [String: String]
    /// The engine options the prepare resolved.
    var nodeOptions: NodeOptions?
    /// The driver's staged change, once prepared.
    var change: (any BlockReopenChange)?
  }

  /// The nodes in QEMU's order: a node, then each of its children's subtrees.
  private(set) var entries: [Entry] = []

  /// The options the engine itself acts on (QEMU's `bdrv_runtime_opts` that
  /// change flags), kept out of what a node stores as its open options.
  static let engineKeys: Set<String> = [
    "read-only", "cache.direct", "cache.no-flush", "discard", "detect-zeroes",
  ]

  /// Queues `node` with the options given for it and those inherited from its
  /// parent, then its children (QEMU's `bdrv_reopen_queue_child`). Options
  /// under a child's name (`file.*`, `backing.*`, `data-file.*`) go to that
  /// child; a child named by reference keeps its options.
  mutating func add(_ node: BlockNode, given: [String: String], inherited: [String: String] = [:]) {
    guard !entries.contains(where: { $0.node === node }) else { return }
    var given = given
    var childOptions: [[String: String]?] = []
    for child in node.children {
      let name = child.role.optionName
      if let reference = given[name] {
        // A reference to the current child reopens it with its options;
        // another node is the driver's business (and an error).
        childOptions.append(reference == child.node.name ? [:] : nil)
        continue
      }
      var extracted: [String: String] = [:]
      for (key, value) in given where key.hasPrefix(name + ".") {
        extracted[String(key.dropFirst(name.count + 1))] = value
        given[key] = nil
      }
      childOptions.append(extracted)
    }
    // Precedence as QEMU's: given, then the node's own, then inherited, then
    // the node's current state.
    var options = given
    node.driver.joinReopenOptions(
      &options, old: node.openOptions.filter { !Self.engineKeys.contains($0.key) })
    options.merge(inherited) { own, _ in own }
    options.merge(node.currentEngineOptions) { own, _ in own }
    entries.append(Entry(node: node, options: options))
    for (child, explicit) in zip(node.children, childOptions) {
      guard let explicit else { continue }
      add(child.node, given: explicit, inherited: Self.inherited(from: options, role: child.role))
    }
  }

  /// What a child takes from its parent's options (QEMU's
  /// `bdrv_inherited_options` and `bdrv_backing_options`): the cache mode,
  /// and read-only for the file and data children; a backing child is
  /// read-only.
  static func inherited(from parent: [String: String], role: ChildRole) -> [String: String] {
    var result: [String: String] = [:]
    for key in ["cache.direct", "cache.no-flush"] { result[key] = parent[key] }
    if role == .backing {
      result["read-only"] = "on"
      result["auto-read-only"] = "off"
    } else {
      for key in ["read-only", "auto-read-only"] { result[key] = parent[key] }
    }
    return result
  }

  /// Runs the transaction: flush, prepare every node, then commit them all
  /// (children first) or abort the prepared ones.
  mutating func run(rootKeepsWriters: Bool = false) async throws {
    for entry in entries {
      do {
        try await entry.node.flush()
      } catch {
        let code = (error as? BlockError)?.code ?? .ioError
        throw BlockError(code, "Error flushing drive: \(Errno.describe(code))")
      }
    }
    do {
      for index in entries.indices {
        let prepared = try await prepare(entries[index])
        entries[index].nodeOptions = prepared.nodeOptions
        entries[index].change = prepared.change
      }
      if rootKeepsWriters, let root = entries.first, root.nodeOptions?.readOnly == true {
        // QEMU's bdrv_list_refresh_perms: a writer cannot stay on a
        // read-only node.
        throw BlockError(
          .notPermitted, "Read-only block node '\(root.node.name)' cannot support read-write users")
      }
    } catch {
      for entry in entries.reversed() { await entry.change?.abort() }
      throw error
    }
    for entry in entries.reversed() {
      await entry.change?.commit()
      entry.node.commitReopen(entry.nodeOptions!, options: entry.options)
    }
    for entry in entries.reversed() {
      await entry.node.refreshAfterReopen()
    }
  }

  /// Prepares one node (QEMU's `bdrv_reopen_prepare`): the engine's options,
  /// then the driver's, then every option left must be unchanged.
  private func prepare(_ entry: Entry) async throws
    -> (nodeOptions: NodeOptions, change: any BlockReopenChange)
  {
    let node = entry.node
    var options = entry.options
    let current = node.options
    let direct = try Self.takeBool(&options, "cache.direct")
    let noFlush = try Self.takeBool(&options, "cache.no-flush")
    let readOnly = try Self.takeBool(&options, "read-only")
    let autoReadOnly = try Self.takeBool(&options, "auto-read-only")
    if let forceShare = options["force-share"] {
      // Validated, then compared with the open options like any other.
      var copy = ["force-share": forceShare]
      _ = try Self.takeBool(&copy, "force-share")
    }
    var discard = current.discard
    if let text = options.removeValue(forKey: "discard") {
      switch text {
      case "off", "ignore": discard = .ignore
      case "on", "unmap": discard = .unmap
      default: throw BlockError(.invalidArgument, "Invalid discard option")
      }
    }
    var detectZeroes = current.detectZeroes
    if let text = options.removeValue(forKey: "detect-zeroes") {
      guard let mode = DetectZeroesMode(rawValue: text) else {
        throw BlockError(.invalidArgument, "invalid parameter value: \(text)")
      }
      detectZeroes = mode
    }
    if detectZeroes == .unmap && discard != .unmap {
      throw BlockError(
        .invalidArgument,
        "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
    }
    if readOnly && node.copyOnReadCount > 0 {
      throw BlockError(
        .invalidArgument, "Can't set node '\(node.name)' to r/o with copy-on-read enabled")
    }
    var nodeOptions = current
    nodeOptions.readOnly = readOnly
    nodeOptions.cache = CacheMode(
      direct: direct, noFlush: noFlush, writeCache: current.cache.writeCacheEnabled)
    nodeOptions.discard = discard
    nodeOptions.detectZeroes = detectZeroes
    var request = BlockReopenRequest(
      options: options, nodeOptions: nodeOptions, autoReadOnly: autoReadOnly)
    let change = try await node.driver.prepareReopen(node, &request)
    do {
      try Self.checkUnchanged(request.options, node: node)
    } catch {
      await change.abort()
      throw error
    }
    return (nodeOptions, change)
  }

  /// QEMU's end of `bdrv_reopen_prepare`: an option no one took must have
  /// the value the node was opened with; a child named by reference must be
  /// the current child.
  private static func checkUnchanged(_ options: [String: String], node: BlockNode) throws {
    for key in options.keys.sorted() {
      let value = options[key]!
      if let child = node.children.first(where: { $0.role.optionName == key }) {
        if value == child.node.name { continue }
        guard BlockGraph.allNodes.contains(where: { $0.name == value }) else {
          throw BlockError(
            .invalidArgument, "Cannot find device='' nor node-name='\(value)'")
        }
        throw BlockError(.notSupported, "Spindle cannot replace the \(key) child of a node")
      }
      if ["backing", "file"].contains(key) {
        throw BlockError(.invalidArgument, "Cannot find device='' nor node-name='\(value)'")
      }
      if node.openOptions[key] != value {
        throw BlockError(.invalidArgument, "Cannot change the option '\(key)'")
      }
    }
  }

  /// Removes a boolean option (QEMU's `qapi_bool_parse`: on/yes/true/y,
  /// off/no/false/n); false when absent.
  static func takeBool(_ options: inout [String: String], _ key: String) throws -> Bool {
    guard let text = options.removeValue(forKey: key) else { return false }
    switch text {
    case "on", "yes", "true", "y": return true
    case "off", "no", "false", "n": return false
    default: throw BlockError(.invalidArgument, "Parameter '\(key)' expects 'on' or 'off'")
    }
  }
}

extension ChildRole {
  /// The child's name in options (`file.*`, `backing.*`, `data-file.*`).
  var optionName: String {
    switch self {
    case .file: "file"
    case .backing: "backing"
    case .data: "data-file"
    }
  }
}

extension CacheMode {
  /// The mode with `cache.direct`, `cache.no-flush` and the write cache set
  /// as given. There is no "direct without flushes" mode: direct keeps the
  /// flushes, as opening with both does.
  init(direct: Bool, noFlush: Bool, writeCache: Bool) {
    switch (direct, noFlush) {
    case (true, _): self = writeCache ? .none : .directsync
    case (false, true): self = .unsafe
    case (false, false): self = writeCache ? .writeback : .writethrough
    }
  }
}
