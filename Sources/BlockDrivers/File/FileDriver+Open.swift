import BlockCore
import CFileSupport
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// How the file driver submits I/O (QEMU's `aio=`). `io_uring` (and `native`,
/// QEMU's Linux AIO, whose place it takes) submits reads, writes and
/// fdatasyncs to the process's io_uring (``FileRing``), falling back to the
/// thread pool when io_uring is unavailable; `threads` uses the thread pool.
/// Without the option, ``FileOpenOptions/ioURingByDefault`` decides.
public enum FileAIOMode: String, Sendable {
  case threads, native
  case ioUring = "io_uring"
}

/// The options of the `file` driver (QEMU's `raw_runtime_opts` in file-posix).
public struct FileOpenOptions: Sendable, Equatable {
  /// The path of the file (a `file:` prefix is stripped as QEMU does, see
  /// ``FileProtocolName/path(of:)``).
  public var filename: String
  /// Image locking (`locking=on|off|auto`, default auto).
  public var locking: FileLockingMode = .auto
  /// The AIO mode (`aio=threads|native|io_uring`); `threads` when not given,
  /// as QEMU reports it.
  public var aio: FileAIOMode {
    get { aioOption ?? .threads }
    set { aioOption = newValue }
  }
  /// The AIO mode if one was given.
  private var aioOption: FileAIOMode?

  /// Whether a file opened without `aio=` submits through io_uring rather
  /// than the thread pool (QEMU's default is threads; Spindle's io_uring path
  /// measured faster, see docs/ARCHITECTURE.md).
  public static let ioURingByDefault = true

  /// Whether reads, writes and fdatasyncs go to the io_uring (when the
  /// kernel offers one).
  public var submitsToIOURing: Bool {
    guard let aioOption else { return Self.ioURingByDefault }
    return aioOption != .threads
  }

  /// Options for a file name with the defaults.
  public init(filename: String) {
    self.filename = filename
  }

  /// Takes the driver's options out of `options`, leaving unknown ones.
  public init(parsing options: inout DriverOptions) throws {
    guard let filename = options.take("filename") else {
      throw BlockError(.invalidArgument, "The 'file' block driver requires a file name")
    }
    self.filename = FileProtocolName.path(of: filename)
    if let text = options.take("locking") {
      guard let mode = FileLockingMode(rawValue: text) else {
        throw BlockError(.invalidArgument, "invalid parameter value: \(text)")
      }
      locking = mode
    }
    if let text = options.take("aio") {
      guard let mode = FileAIOMode(rawValue: text) else {
        throw BlockError(.invalidArgument, "invalid parameter value: \(text)")
      }
      aio = mode
    }
    // Accepted and ignored: batching, page cache dropping on migration.
    _ = try options.takeInt("aio-max-batch")
    _ = try options.takeBool("drop-cache", default: true)
    _ = try options.takeBool("x-check-cache-dropped", default: false)
  }
}

extension FileDriver {
  /// Opens a `file` node from driver options (the ``ImageOpener`` factory).
  static func openNode(_ options: inout DriverOptions, _ context: OpenContext) async throws
    -> BlockNode
  {
    let parsed = try FileOpenOptions(parsing: &options)
    let driver = try await open(
      parsed, node: context.node, forceShare: context.forceShare,
      sharesWrites: context.sharesFileWrites)
    return try await ImageOpener.openNode(over: driver, options: context.node)
  }

  /// Opens the file: read-only or read-write as `node` says, with O_DIRECT
  /// for cache=none/directsync, locked unless `locking=off` (sharing every
  /// permission with `forceShare`, allowed only read-only).
  public static func open(
    _ options: FileOpenOptions, node: NodeOptions, forceShare: Bool, sharesWrites: Bool = false
  )
    async throws -> FileDriver
  {
    if forceShare && !node.readOnly {
      throw BlockError(.invalidArgument, "force-share=on can only be used with read-only images")
    }
    let direct = node.cache.direct
    if options.aio == .native && !direct {
      throw BlockError(
        .invalidArgument,
        "aio=native was specified, but it requires cache.direct=on, which was not specified.")
    }
    let permissions = ImagePermissions.forOpen(
      readOnly: node.readOnly, forceShare: forceShare, sharesWrites: sharesWrites)
    let useLock = options.locking != .off
    let readOnly = node.readOnly
    let filename = options.filename
    let opened = try await FileIOPool.run { () throws(BlockError) -> OpenedFile in
      try OpenedFile(
        filename: filename, readOnly: readOnly, direct: direct,
        lockWith: useLock ? permissions : nil)
    }
    let driver = FileDriver(
      filename: filename, file: opened.file, direct: direct,
      alignment: opened.alignment, lock: opened.lock, permissions: permissions,
      ring: options.submitsToIOURing ? FileRing.shared : nil)
    driver.sharing = (forceShare, sharesWrites)
    return driver
  }
}

/// A file opened, checked, locked and probed on an I/O thread.
struct OpenedFile: Sendable {
  let file: PosixFile
  let lock: ImageLock?
  let alignment: (request: Int64, buffer: Int)

  init(filename: String, readOnly: Bool, direct: Bool, lockWith permissions: ImagePermissions?)
    throws(BlockError)
  {
    let file = try Self.openFile(filename, readOnly: readOnly, direct: direct)
    do throws(BlockError) {
      let status: PosixFile.Status
      do {
        status = try file.status()
      } catch {
        throw PosixFile.blockError(error, "Could not stat file")
      }
      guard status.isRegularFile else {
        throw BlockError(
          .invalidArgument, "'file' driver requires '\(filename)' to be a regular file")
      }
      if let permissions {
        var lock = ImageLock(fd: file.fd)
        try lock.change(
          to: permissions,
          from: ImagePermissions(perm: [], shared: .all), filename: filename)
        self.lock = lock
      } else {
        self.lock = nil
      }
      alignment = direct ? try DirectIOAlignment.probe(file) : (1, 1)
      self.file = file
    } catch {
      file.close()
      throw error
    }
  }

  /// open(2) with QEMU's error messages (`qemu_open`).
  static func openFile(_ filename: String, readOnly: Bool, direct: Bool)
    throws(BlockError) -> PosixFile
  {
    let flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC
    var fd: Int32
    repeat {
      fd = open(filename, flags | (direct ? cfs_o_direct() : 0))
    } while fd < 0 && errno == EINTR
    if fd >= 0 { return PosixFile(fd: fd) }
    let code = PosixFile.lastError
    if code == .invalidArgument && direct {
      let plain = open(filename, flags)
      if plain >= 0 {
        PosixFile(fd: plain).close()
        throw BlockError(
          .invalidArgument, "Could not open '\(filename)': filesystem does not support O_DIRECT")
      }
    }
    // A read-only file system refuses like a permission problem (QEMU's EROFS -> EACCES).
    throw BlockError(
      code == .readOnlyFileSystem ? .permissionDenied : code,
      "Could not open '\(filename)': \(Errno.describe(code))")
  }
}
