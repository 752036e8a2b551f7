import BlockCore

/// One run of QEMU's qcow2 consistency check (`qcow2_check_refcounts` and
/// `check_oflag_copied`, block/qcow2-refcount.c): counts the references every
/// host cluster should have from the header, the active and snapshot L1/L2
/// tables, the snapshot table and the refcount structure itself, compares
/// them with the stored refcounts and repairs what ``mode`` allows.
///
/// The checker reads and writes the `file` node directly; the driver reloads
/// its cached tables afterwards. Call with the driver's metadata lock held.
@BlockActor
final class Qcow2Checker {
  /// Errors that end the check (QEMU's negative return values).
  struct Abort: Error {
    let error: BlockError
  }

  let file: BlockNode
  /// The header, updated by repairs (refcount table, feature bits).
  var header: Qcow2Header
  let mode: Qcow2CheckMode
  let clusterBits: Int64
  let clusterSize: Int64
  /// The largest refcount an entry of this image holds.
  let refcountMax: UInt64
  /// log2 of the entries per refcount block.
  let blockBits: Int64
  /// Bytes per L2 entry: 16 with extended L2 entries, else 8.
  let l2EntryBytes: Int64
  /// Whether guest data lives in an external data file.
  let hasDataFile: Bool
  var result = Qcow2CheckResult()
  /// Whether a corruption was signalled (QEMU's `signaled_corruption`).
  var signaledCorruption = false

  /// The references counted so far, one per host cluster (QEMU's in-memory
  /// refcount table); its count is QEMU's `nb_clusters`.
  var references = Qcow2ReferenceCounts(count: 0)
  /// The stored refcount table, updated by a rebuild.
  var storedTable: [UInt64] = []
  /// The refcount table the image had when a rebuild started (what QEMU's
  /// overlap checks look at during the rebuild).
  var oldTable: [UInt64] = []
  /// Stored refcount blocks read so far, by offset.
  var storedBlocks: [Int64: Qcow2RefcountBlock] = [:]
  /// The active L1 table, updated by COPIED repairs.
  var l1Table: [UInt64] = []
  /// The internal snapshots.
  var snapshots: [Qcow2SnapshotEntry] = []
  /// Bytes the snapshot table occupies.
  var snapshotTableSize: Int64 = 0
  /// Corruptions of the snapshot table not yet in ``result`` (QEMU's
  /// separate `snapshot_res`).
  var snapshotCorruptions: Int64 = 0
  /// Snapshot table corruptions repaired, not yet in ``result``.
  var snapshotCorruptionsFixed: Int64 = 0
  /// Whether the clusters of a replaced snapshot table are discarded in the
  /// file (QEMU's `pass-discard-snapshot`).
  var discardsFreedSnapshotTable = true

  /// A checker of the image in `file`, described by `header`.
  init(file: BlockNode, header: Qcow2Header, mode: Qcow2CheckMode) {
    self.file = file
    self.header = header
    self.mode = mode
    clusterBits = Int64(header.clusterBits)
    clusterSize = header.clusterSize
    refcountMax = header.refcountBits == 64 ? .max : (1 << UInt64(header.refcountBits)) - 1
    blockBits = Int64(header.clusterBits) + 3 - Int64(header.refcountOrder)
    l2EntryBytes = header.incompatibleFeatures & Qcow2Feature.extendedL2 != 0 ? 16 : 8
    hasDataFile = header.incompatibleFeatures & Qcow2Feature.externalDataFile != 0
  }

  /// Entries per L2 table.
  var l2Size: Int { Int(clusterSize / l2EntryBytes) }
  /// Whether L2 entries carry subcluster bitmaps.
  var hasSubclusters: Bool { l2EntryBytes == 16 }

  /// Runs the check (QEMU's `qcow2_co_check_locked`) and returns its result.
  func run() async -> Qcow2CheckResult {
    do {
      try await readSnapshotTable()
      try await loadMetadata()
      do {
        try await checkRefcounts()
        try await fixSnapshotTable()
      } catch {
        mergeSnapshotCounts()
        throw error
      }
      mergeSnapshotCounts()
      if !mode.isEmpty && result.checkErrors == 0 && result.corruptions == 0 {
        try await markCleanAndConsistent()
      }
    } catch let abort as Abort {
      result.failure = abort.error
    } catch let error as BlockError {
      result.failure = error
    } catch {
      result.failure = BlockError(.ioError, "\(error)")
    }
    return result
  }

  /// Records a line QEMU prints on standard error.
  func report(_ line: String) { result.messages.append(line) }

  /// Records a line QEMU prints with `error_report` (the program name first).
  func reportError(_ line: String) {
    result.errorReports.insert(result.messages.count)
    result.messages.append(line)
  }

  /// QEMU's `qcow2_signal_corruption`: the first corruption found on a
  /// writable image marks it corrupt (and makes it unusable), on a
  /// read-only one it is reported; later ones are not reported again.
  func signalCorruption(_ message: String) async {
    guard !signaledCorruption else { return }
    signaledCorruption = true
    if mode.isEmpty {
      report(
        "qcow2: Image is corrupt: \(message); further non-fatal corruption events will be suppressed"
      )
      return
    }
    report(
      "qcow2: Marking image as corrupt: \(message); further corruption events will be suppressed")
    header.incompatibleFeatures |= Qcow2Feature.corrupt
    try? await file.writeQcow2HeaderField(.incompatibleFeatures, header.incompatibleFeatures)
    try? await file.flush()
  }

  /// Reads the active L1 table and the refcount table.
  private func loadMetadata() async throws {
    let l1Bytes = try await readPadded(
      at: Int64(header.l1TableOffset), count: Int(header.l1Size) * 8)
    l1Table = l1Bytes.bigEndianUInt64s(count: Int(header.l1Size))
    let entries = Int(header.refcountTableClusters) * Int(clusterSize) / 8
    storedTable = try await readPadded(at: Int64(header.refcountTableOffset), count: entries * 8)
      .bigEndianUInt64s(count: entries)
  }

  /// Clears the dirty and corrupt bits after a successful repair (QEMU's
  /// `qcow2_mark_clean` and `qcow2_mark_consistent`).
  private func markCleanAndConsistent() async throws {
    let bits = Qcow2Feature.dirty | Qcow2Feature.corrupt
    guard header.version >= 3, header.incompatibleFeatures & bits != 0 else { return }
    try await file.flush()
    header.incompatibleFeatures &= ~bits
    try await file.writeQcow2HeaderField(.incompatibleFeatures, header.incompatibleFeatures)
    try await file.flush()
  }

  /// `count` bytes from `offset`, zeroes where the file ends (as QEMU's reads
  /// past the end of a file). A range starting below 0 or reaching past
  /// ``BlockNode/maxLength`` (offsets read from a hostile file) is an I/O
  /// error, as QEMU's `bdrv_check_request` makes it.
  func readPadded(at offset: Int64, count: Int) async throws -> [UInt8] {
    guard count > 0 else { return [] }
    guard offset >= 0, Int64(count) <= BlockNode.maxLength,
      offset <= BlockNode.maxLength - Int64(count)
    else { throw BlockError(.ioError) }
    let available = max(0, min(Int64(count), file.length - offset))
    var bytes = available > 0 ? try await file.read(at: offset, count: Int(available)) : []
    if bytes.count < count { bytes += [UInt8](repeating: 0, count: count - bytes.count) }
    return bytes
  }

  /// The number of clusters `bytes` span, rounded up.
  func clusters(_ bytes: Int64) -> Int64 { (bytes + clusterSize - 1) >> clusterBits }

  /// The references counted for `cluster`, 0 past the counted range.
  func counted(_ cluster: Int64) -> UInt64 {
    cluster >= 0 && cluster < Int64(references.count) ? references[Int(cluster)] : 0
  }

  /// Grows the counted range to `count` clusters (QEMU's
  /// `realloc_refcount_array`).
  func growReferences(to count: Int64) {
    references.grow(to: Int(count))
  }
}

/// `value` in lower-case hexadecimal, as C's `%x`/`PRIx64`.
func hex(_ value: UInt64) -> String { String(value, radix: 16) }

/// `value` as C's `%#x`: "0x" and hexadecimal, or "0".
func alternateHex(_ value: UInt64) -> String { value == 0 ? "0" : "0x" + hex(value) }
