import BlockCore

extension Qcow2Driver {
  /// Opens a `qcow2` node over its `file` child (the ``ImageOpener`` factory):
  /// reads and validates the header, loads the L1 table, and opens the backing
  /// file read-only, its name resolved against the image's folder and its
  /// format taken from the backing format extension (probed when absent).
  static func openNode(_ options: inout DriverOptions, _ context: OpenContext) async throws
    -> BlockNode
  {
    let imagePath = options["file.filename"] ?? options["file"]
    let runtimeOptions = try Qcow2OpenOptions.take(from: &options)
    if let reference = options.take("backing") {
      // A backing node named by reference: Spindle has no named nodes.
      throw BlockError(
        .invalidArgument,
        "Could not open backing file: Cannot find device='\(reference)' nor node-name='\(reference)'"
      )
    }
    let dataFile = takeDataFileOptions(&options)
    // `backing.*` options are the backing node's (QEMU's
    // `bdrv_open_backing_file`); without a backing open they are left over.
    let backingOptions = context.openBacking ? options.takeChild("backing") : DriverOptions()
    // QEMU's children of a format unmap on discard whatever the parent's
    // policy: the format decides what reaches them (bdrv_inherited_options).
    var fileContext = context
    fileContext.node.discard = .unmap
    let file = try await ImageOpener.openFileChild(&options, context: fileContext)
    let node = try await open(
      over: file, imagePath: imagePath, dataFileOptions: dataFile,
      backingOptions: backingOptions, context: context)
    do {
      try (node.driver as? Qcow2Driver)?.apply(
        runtimeOptions, discardUnmap: context.node.discard == .unmap)
    } catch {
      await node.close()
      throw error
    }
    return node
  }

  /// Opens a `qcow2` node over an opened file node; `imagePath` is what
  /// relative backing and data file names are resolved against;
  /// `dataFileOptions` override the external data file the header names;
  /// `backingOptions` are the backing node's options (a `driver` overrides
  /// the header's backing format, a `file` the backing file name).
  /// Closes `file` on failure.
  static func open(
    over file: BlockNode, imagePath: String?, dataFileOptions: DriverOptions? = nil,
    backingOptions: DriverOptions = DriverOptions(), context: OpenContext
  ) async throws -> BlockNode {
    var backing: BlockNode?
    var dataFile: BlockNode?
    do {
      var header = try await readHeader(file, forCheck: context.forCheck)
      warnIfBitmapsInvalidated(header, context: context)
      if header.incompatibleFeatures & Qcow2Feature.corrupt != 0 && !context.node.readOnly
        && !context.forCheck
      {
        throw BlockError(.permissionDenied, "qcow2: Image is corrupt; cannot be opened read/write")
      }
      let l1Bytes = IOVector(allocating: Int(header.l1Size) * 8)
      if header.l1Size > 0 {
        try await file.read(at: Int64(header.l1TableOffset), into: l1Bytes)
      }
      let l1Table = l1Bytes.toArray().bigEndianUInt64s(count: Int(header.l1Size))
      var refcountTable: [UInt64]?
      var snapshots = Qcow2SnapshotTable()
      if !context.node.readOnly {
        // Persistent bitmaps stay valid when this open keeps them current
        // (``trackPersistentBitmaps(_:)``, also for a check, as QEMU loads
        // them whatever the open is for) or only edits them.
        let keepsBitmaps =
          context.editsPersistentBitmaps
          || (header.version >= 3
            && header.extensions.contains { $0.type == Qcow2HeaderExtension.bitmaps })
        refcountTable = try await prepareForWriting(
          file, header: &header, keepingBitmaps: keepsBitmaps)
        // A check reads (and repairs) the snapshot table itself.
        if !context.forCheck {
          snapshots = try await Qcow2SnapshotTable.read(file, header: header)
        }
      }
      dataFile = try await openDataFile(
        header: header, override: dataFileOptions, imagePath: imagePath, context: context)
      if let name = header.backingFile, context.openBacking {
        var backingContext = context
        backingContext.node.readOnly = true
        backingContext.node.copyOnRead = false
        do {
          let namesFile = backingOptions["file"] != nil || backingOptions["file.filename"] != nil
          backing = try await ImageOpener.open(
            filename: namesFile ? nil : resolveBackingName(name, relativeTo: imagePath),
            format: backingOptions["driver"] == nil ? header.backingFormat : nil,
            options: backingOptions, context: backingContext)
        } catch let error as BlockError {
          throw BlockError(error.code, "Could not open backing file: \(error)")
        }
      }
      let driver = Qcow2Driver(
        header: header, l1Table: l1Table, refcountTable: refcountTable)
      driver.safety.diagnostics = context.diagnostics
      driver.safety.errorReport = context.errorReport
      driver.safety.snapshotTableSize = snapshots.size
      driver.safety.inactiveL1Tables = snapshots.l1Tables
      let node = BlockNode(name: ImageOpener.newNodeName(), driver: driver, options: context.node)
      node.attach(file, role: .file)
      if let dataFile { node.attach(dataFile, role: .data) }
      if let backing { node.attach(backing, role: .backing) }
      driver.refcounts?.checkWrite = { [unowned driver, weak node] offset, bytes, ignoring in
        guard let node else { return }
        try await driver.checkOverlapBeforeWrite(
          node, offset: offset, size: bytes, ignoring: ignoring)
      }
      try await node.open()
      if refcountTable != nil {
        try await driver.dropInvalidatedBitmaps(node)
        if !context.forCheck { try await driver.repairIfDirty(node) }
        if !context.editsPersistentBitmaps { try await driver.trackPersistentBitmaps(node) }
      } else {
        try await driver.validatePersistentBitmaps(node)
      }
      return node
    } catch {
      await backing?.close()
      await dataFile?.close()
      await file.close()
      throw error
    }
  }

  /// A writable open (QEMU's `qcow2_do_open` for read-write): clears
  /// the autoclear bits of features it does not maintain (all but "raw
  /// external data", and the bitmaps bit when `keepingBitmaps`: the open
  /// keeps the bitmaps current or edits them) in the header, and loads the
  /// refcount table.
  static func prepareForWriting(
    _ file: BlockNode, header: inout Qcow2Header, keepingBitmaps: Bool = false
  ) async throws -> [UInt64] {
    let kept =
      header.autoclearFeatures
      & (Qcow2Feature.rawExternalData | (keepingBitmaps ? Qcow2Feature.bitmaps : 0))
    if header.version >= 3 && kept != header.autoclearFeatures {
      header.autoclearFeatures = kept
      try await file.writeQcow2HeaderField(.autoclearFeatures, kept)
      try await file.flush()
    }
    let entries = Int(header.refcountTableClusters) * Int(header.clusterSize) / 8
    do {
      try await file.emit(.reftableLoad)
      let bytes = try await file.read(at: Int64(header.refcountTableOffset), count: entries * 8)
      return bytes.bigEndianUInt64s(count: entries)
    } catch let error as BlockError {
      throw BlockError(
        error.code, "Could not initialize refcount handling: \(error.codeDescription)")
    }
  }

  /// Reads the first cluster (or the whole file when shorter) and parses it;
  /// `forCheck` leaves the snapshot table to the check.
  static func readHeader(_ file: BlockNode, forCheck: Bool = false) async throws -> Qcow2Header {
    let fileLength = file.length
    var bytes = try await file.read(at: 0, count: Int(min(fileLength, 4096)))
    let clusterBits = bytes.count >= 24 ? bytes.uint32(at: 20) : 0
    if (9...21).contains(clusterBits) {
      let wanted = min(fileLength, Int64(1) << Int64(clusterBits))
      if wanted > Int64(bytes.count) {
        bytes = try await file.read(at: 0, count: Int(wanted))
      }
    }
    return try Qcow2Header.parse(bytes, fileLength: fileLength, forCheck: forCheck)
  }

  /// QEMU's `bdrv_get_full_backing_filename`: a relative name is relative to
  /// the folder of the image that names it; absolute names and
  /// `protocol:`/`json:` names stay as they are.
  public static func resolveBackingName(_ name: String, relativeTo imagePath: String?) -> String {
    if name.hasPrefix("/") || name.hasPrefix("json:") { return name }
    if let colon = name.firstIndex(of: ":"), !name[..<colon].contains("/") { return name }
    guard let imagePath, let slash = imagePath.lastIndex(of: "/") else { return name }
    return String(imagePath[...slash]) + name
  }
}
