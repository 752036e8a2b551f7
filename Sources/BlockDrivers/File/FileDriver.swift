import BlockCore
import SystemPackage

/// QEMU's `file` protocol driver (block/file-posix.c): a node over a regular
/// file on a POSIX host.
///
/// Reads and writes are vectored pread/pwrite calls, zero-writes and discards
/// go through fallocate, block status comes from lseek(SEEK_DATA/SEEK_HOLE),
/// and flushes are fdatasync. Every blocking system call runs on the shared
/// ``FileIOPool``, never on ``BlockActor``; with `aio=io_uring` reads, writes
/// and fdatasyncs are submitted to the process's ``FileRing`` instead. `cache=none`/`directsync` open the
/// file with O_DIRECT and probe the alignment it needs. The image is locked
/// with QEMU's byte-range lock layout (see ``ImagePermissions``).
///
/// Open it through ``ImageOpener`` (`driver=file,filename=PATH`) or
/// ``open(_:node:forceShare:)``.
@BlockActor
public final class FileDriver: BlockDriver {
  /// The file name as given in the options.
  public let filename: String
  /// Whether the file is open with O_DIRECT.
  public internal(set) var direct: Bool
  /// The alignment O_DIRECT requires of offsets and lengths (1 without it).
  public internal(set) var requestAlignment: Int64
  /// The alignment O_DIRECT requires of buffer addresses (1 without it).
  public internal(set) var bufferAlignment: Int
  /// The permissions held on the image, and those shared with others.
  public internal(set) var permissions: ImagePermissions
  /// How the file was opened to share the image: `forceShare` (qemu-img
  /// -U) and `writes` (a raw image or a file opened directly lets others
  /// write); a reopen keeps them.
  var sharing: (forceShare: Bool, writes: Bool) = (false, false)
  /// Whether image locking is in use.
  public var isLocking: Bool { lock != nil }

  var file: PosixFile?
  var lock: ImageLock?
  /// fallocate modes not yet found unsupported.
  var fallocateSupport = FallocateSupport.all
  /// The last data extent lseek(SEEK_DATA/SEEK_HOLE) found (QEMU's block
  /// status cache): block status inside it answers DATA without a system
  /// call. Writes only turn holes into data, so only discards, zero-writes
  /// and truncation invalidate it; a file another process punches holes into
  /// may then report zeroes as data, which is always correct, as in QEMU.
  var knownDataExtent: Range<Int64>?
  /// Counts invalidations of ``knownDataExtent``: an lseek answer is cached
  /// only if no discard, zero-write or truncation started while it ran.
  var dataExtentGeneration: UInt64 = 0
  /// The errno of a failed fdatasync without O_DIRECT: the page cache may have
  /// dropped dirty data, so every later flush fails too (QEMU's
  /// `page_cache_inconsistent`).
  var pageCacheError: Errno?
  /// The io_uring that reads, writes and fdatasyncs go through, or nil for
  /// the thread pool (``FileIOPool``).
  var ring: FileRing?
  /// A test hook: treat the ring as full, so that every request falls back
  /// to the thread pool.
  var ringRefusesRequests = false
  /// A test seam: completion results that replace those of this node's next
  /// ring operations, in order (each operation is still submitted and
  /// completes). Lets tests produce short transfers, EAGAIN and ECANCELED
  /// that the kernel will not.
  var injectedRingResults: [Int32] = []

  /// Whether reads, writes and fdatasyncs go through io_uring.
  public var usesIOURing: Bool { ring != nil }

  init(
    filename: String, file: PosixFile, direct: Bool, alignment: (request: Int64, buffer: Int),
    lock: ImageLock?, permissions: ImagePermissions, ring: FileRing? = nil
  ) {
    self.filename = filename
    self.file = file
    self.direct = direct
    self.requestAlignment = alignment.request
    self.bufferAlignment = alignment.buffer
    self.lock = lock
    self.permissions = permissions
    self.ring = ring
  }

  public nonisolated var formatName: String { "file" }

  public var capabilities: DriverCapabilities {
    var capabilities = DriverCapabilities(kind: .protocolDriver)
    capabilities.hasBlockStatus = true
    capabilities.canWriteZeroes = true
    capabilities.supportedZeroFlags = [.mayUnmap, .noFallback]
    return capabilities
  }

  /// QEMU's `raw_refresh_limits`: the probed O_DIRECT alignments, buffers
  /// preferably page aligned, at most IOV_MAX segments per request.
  public func refreshLimits(_ limits: inout BlockLimits, node: BlockNode) {
    limits.requestAlignment = requestAlignment
    limits.minMemAlignment = bufferAlignment
    limits.optMemAlignment = max(bufferAlignment, 4096)
    limits.maxIOV = PosixFile.maxVectors
  }

  public func length(_ node: BlockNode) async throws -> Int64 {
    let file = try openFile()
    return try await io { try file.status().size }
  }

  /// The bytes of storage the file occupies (QEMU's
  /// `raw_get_allocated_file_size`, st_blocks * 512).
  public func allocatedSize() async throws -> Int64 {
    let file = try openFile()
    return try await io { try file.status().allocatedBytes }
  }

  /// ``allocatedSize()`` for the engine.
  public func allocatedFileSize(_ node: BlockNode) async throws -> Int64 {
    try await allocatedSize()
  }

  /// Changes the permissions held on the image (QEMU's `raw_check_perm` and
  /// `raw_set_perm`): a format that must not let others write its file
  /// narrows `shared`; a conflict with another process fails and leaves the
  /// old permissions in place.
  public func setPermissions(_ new: ImagePermissions) async throws {
    guard let lock else {
      permissions = new
      return
    }
    let old = permissions
    let filename = filename
    self.lock = try await FileIOPool.run {
      var changed = lock
      try changed.change(to: new, from: old, filename: filename)
      return changed
    }
    permissions = new
  }

  public func close(_ node: BlockNode) async {
    guard let file else { return }
    self.file = nil
    let lock = self.lock
    self.lock = nil
    _ = try? await FileIOPool.run {
      var lock = lock
      lock?.release()
      file.close()
    }
  }

  /// The open file, or EIO once closed (QEMU's `fd_open`).
  func openFile() throws -> PosixFile {
    guard let file else { throw BlockError(.ioError, "File is closed", context: filename) }
    return file
  }

  /// Runs a blocking call on the I/O pool; an errno becomes a block error
  /// with that code.
  func io<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    do {
      return try await FileIOPool.run(body)
    } catch let error as Errno {
      throw BlockError(error)
    }
  }
}
