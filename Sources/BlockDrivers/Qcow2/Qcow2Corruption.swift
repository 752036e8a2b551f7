import BlockCore

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// What the driver knows about the image's integrity: which metadata writes
/// are checked against, where the snapshot metadata is, and whether a
/// corruption was found (QEMU's `overlap_check`, `snapshots_size`,
/// `signaled_corruption` and the `bs->drv = NULL` of a fatal corruption).
struct Qcow2SafetyState {
  /// The sections writes are checked against (`overlap-check`).
  var overlapChecks: Qcow2OverlapSections = .cached
  /// The snapshot table's length in bytes.
  var snapshotTableSize: Int64 = 0
  /// The snapshots' L1 tables.
  var inactiveL1Tables: [Qcow2SnapshotTable.L1Table] = []
  /// A fatal corruption was found: every request fails with "No medium".
  var isUnusable = false
  /// A corruption was reported; later ones are not (QEMU's
  /// `signaled_corruption`).
  var signaledCorruption = false
  /// When the metadata caches are cleaned.
  var cacheCleaning = Qcow2CacheCleaning()
  /// Which freed clusters are discarded in the file.
  var discardPassthrough = Qcow2DiscardPassthrough()
  /// Where messages for the user go (standard error when nil).
  var diagnostics: OpenContext.Diagnostics?
  /// Where error reports go, the receiver adding the program's name
  /// (standard error, without it, when nil).
  var errorReport: OpenContext.Diagnostics?
  /// L2 tables a write to the file failed for: QEMU's cache keeps them
  /// dirty, and closing the image tries them again.
  var unwrittenL2Tables: Set<Int64> = []
  /// The `lazy-refcounts` open option, when given (else the image's
  /// feature bit decides).
  var lazyRefcounts: Bool?
}

extension Qcow2Driver {
  /// Reports a corruption found in the image (QEMU's
  /// `qcow2_signal_corruption`): prints QEMU's message and, when `fatal` and
  /// the image is writable, sets the corrupt bit in the header (flushed) and
  /// makes the node unusable. Later non-fatal reports, and any report once the
  /// image is marked corrupt, are suppressed.
  func signalCorruption(_ node: BlockNode, fatal: Bool, _ message: String) async {
    let fatal = fatal && refcounts != nil && !node.isReadOnly
    if safety.signaledCorruption
      && (!fatal || header.incompatibleFeatures & Qcow2Feature.corrupt != 0)
    {
      return
    }
    let text =
      fatal
      ? "qcow2: Marking image as corrupt: \(message); further corruption events will be suppressed\n"
      : "qcow2: Image is corrupt: \(message); further non-fatal corruption events will be suppressed\n"
    report(text)
    if fatal {
      await markCorrupt(node)
      safety.isUnusable = true
    }
    safety.signaledCorruption = true
  }

  /// Sets the corrupt bit (incompatible bit 1) in the header and flushes
  /// (QEMU's `qcow2_mark_corrupt`); version 2 headers have no such field.
  /// Failures are ignored: the request that found the corruption fails anyway.
  private func markCorrupt(_ node: BlockNode) async {
    header.incompatibleFeatures |= Qcow2Feature.corrupt
    guard header.version >= 3, let file = node.file else { return }
    do {
      try await file.writeQcow2HeaderField(.incompatibleFeatures, header.incompatibleFeatures)
      try await file.flush()
    } catch {
      // Nothing more to do: the node is unusable from now on.
    }
  }

  /// Zero-writes (``zeroClusters(_:offset:length:flags:)``), reporting the
  /// corruptions they find.
  public func writeZeroes(_ node: BlockNode, offset: Int64, length: Int64, flags: RequestFlags)
    async throws
  {
    try checkUsable()
    try await reportingCorruption(node) {
      try await zeroClusters(node, offset: offset, length: length, flags: flags)
    }
  }

  /// Discards (``discardRequest(_:offset:length:)``), reporting the
  /// corruptions they find.
  public func discard(_ node: BlockNode, offset: Int64, length: Int64) async throws {
    try checkUsable()
    try await reportingCorruption(node) {
      try await discardRequest(node, offset: offset, length: length)
    }
  }

  /// Runs a request, reporting the corruptions it finds in the tables
  /// (errors from ``corruption(_:)``) as QEMU's `qcow2_signal_corruption`
  /// does for them: fatal, so a writable image is marked corrupt.
  func reportingCorruption<T>(_ node: BlockNode, _ body: @BlockActor () async throws -> T)
    async throws -> T
  {
    do {
      return try await body()
    } catch let error as BlockError
      where error.code == .ioError && error.message.hasPrefix(Self.corruptionPrefix)
    {
      await signalCorruption(
        node, fatal: true, String(error.message.dropFirst(Self.corruptionPrefix.count)))
      throw error
    }
  }

  /// A number as C's `%#x` prints it: `0x` and hex digits, but a bare `0`.
  static func alternateHex(_ value: some BinaryInteger) -> String {
    value == 0 ? "0" : "0x" + String(value, radix: 16)
  }

  /// How ``corruption(_:)`` messages begin.
  static let corruptionPrefix = "Image is corrupt: "

  /// Fails when a fatal corruption made the node unusable (QEMU's requests on
  /// a node whose driver was removed fail with ENOMEDIUM).
  func checkUsable() throws {
    if safety.isUnusable { throw BlockError(BlockError.noMediumCode) }
  }

  /// Prints `text` where the opener asked, else on standard error.
  func report(_ text: String) {
    if let diagnostics = safety.diagnostics {
      diagnostics(text)
      return
    }
    writeToStandardError(text)
  }
}

/// Writes `text` to file descriptor 2, retrying short writes.
func writeToStandardError(_ text: String) {
  let bytes = Array(text.utf8)
  var written = 0
  while written < bytes.count {
    let count = bytes.withUnsafeBytes { write(2, $0.baseAddress! + written, $0.count - written) }
    if count <= 0 { break }
    written += count
  }
}
