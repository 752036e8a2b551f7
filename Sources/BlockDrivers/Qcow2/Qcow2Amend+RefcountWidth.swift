import BlockCore

extension Qcow2Driver {
  /// Changes the refcount entry width to `2^order` bits (what QEMU's
  /// `qcow2_change_refcount_order` achieves): the references are counted,
  /// a new refcount structure with the new width is written in free
  /// clusters, the header switched to it, and the old structure freed.
  /// The layout of the new structure is the check's rebuild layout, not
  /// QEMU's.
  func changeRefcountWidth(_ node: BlockNode, file: BlockNode, order: UInt32) async throws {
    let counter = Qcow2Checker(file: file, header: header, mode: [])
    try await counter.loadMetadata()
    try await counter.countAll()
    let bits = 1 << Int(order)
    let newMax: UInt64 = bits == 64 ? .max : (1 << UInt64(bits)) - 1
    if let cluster = counter.references.firstIndex(where: { $0 > newMax }) {
      throw BlockError(
        .invalidArgument,
        "Cannot decrease refcount entry width to \(bits) bits: Cluster at offset 0x\(String(cluster << Int(header.clusterBits), radix: 16)) has a refcount of \(counter.references[cluster])"
      )
    }
    var widened = header
    widened.refcountOrder = order
    let builder = Qcow2Checker(file: file, header: widened, mode: [])
    try await builder.loadMetadata()
    builder.references = counter.references
    try await builder.rebuildRefcountStructure()
    if builder.result.failure != nil || builder.result.checkErrors != 0 {
      throw BlockError(.ioError, "Failed to write the new refcount structure")
    }
    var field = [UInt8](repeating: 0, count: 4)
    field.setUInt32(order, at: 0)
    try await file.write(at: 96, bytes: field)
    try await file.flush()
    header = builder.header
    refcounts = Qcow2Refcounts(header: header, table: builder.storedTable)
    // The old structure is leaked now: free it.
    let cleaner = Qcow2Checker(file: file, header: header, mode: .fixLeaks)
    let result = await cleaner.run()
    if let failure = result.failure { throw failure }
    refcounts?.reload(tableOffset: Int64(header.refcountTableOffset), table: cleaner.storedTable)
  }
}

extension Qcow2Checker {
  /// Counts every cluster's references without comparing or repairing.
  func countAll() async throws {
    references = [UInt64](repeating: 0, count: Int(clusters(file.length)))
    var rebuild = false
    try await calculateRefcounts(fix: [], rebuild: &rebuild)
    if result.corruptions != 0 {
      throw BlockError(.ioError, "Image is corrupt; run 'qemu-img check -r all' first")
    }
  }
}
