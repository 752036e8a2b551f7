import BlockCore
import BlockDrivers

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

extension IOSession {
  /// `reopen [(-r|-w)] [-c cache] [-o options]` (qemu-io's `reopen_f`).
  ///
  /// Spindle supports what the engine can change: the write cache
  /// (writeback or writethrough, a property of the backend), `cache.direct`
  /// and `cache.no-flush` of the whole graph (``BlockNode/reopenCache``; not
  /// both on at once), and read-only, which the session enforces as QEMU's
  /// permission check does (writes are refused with "Block node is
  /// read-only"); a node opened read-only cannot become writable. The rest
  /// fails with an error.
  func reopenCommand(_ words: [String]) async -> Int32 {
    let command = findCommand("reopen")!
    let backend = activeBackend
    let root = backend.root
    var readOnly = root.isReadOnly || reopenedReadOnly
    var cache = root.options.cache
    var writethrough = !backend.writeCacheEnabled
    var hasReadWriteOption = false
    var hasCacheOption = false
    var options = DriverOptions()
    var parser = self.options(words, "c:o:rw")
    while let result = parser.next() {
      switch result {
      case .option("c"):
        guard let mode = parseCacheMode(parser.optarg!) else {
          reporter.error("Invalid cache option: \(parser.optarg!)")
          return -EINVAL
        }
        cache = mode
        writethrough = !mode.writeCacheEnabled
        hasCacheOption = true
      case .option("o"):
        for (key, value) in parseOptionString(parser.optarg!, reporter: reporter).values {
          options[key] = value
        }
      case .option("r"), .option("w"):
        if hasReadWriteOption {
          reporter.error("Only one -r/-w option may be given")
          return -EINVAL
        }
        readOnly = result == .option("r")
        hasReadWriteOption = true
      default:
        usage(command)
        return -EINVAL
      }
    }
    guard parser.operands.isEmpty else {
      usage(command)
      return -EINVAL
    }
    do {
      if options["read-only"] != nil {
        if hasReadWriteOption {
          reporter.error("Cannot set both -r/-w and 'read-only'")
          return -EINVAL
        }
        readOnly = try options.takeBool("read-only", default: readOnly)
      }
      var direct = cache.direct
      var noFlush = cache.noFlush
      if options["cache.direct"] != nil || options["cache.no-flush"] != nil {
        if hasCacheOption {
          reporter.error("Cannot set both -c and the cache options")
          return -EINVAL
        }
        direct = try options.takeBool("cache.direct", default: root.options.cache.direct)
        noFlush = try options.takeBool("cache.no-flush", default: root.options.cache.noFlush)
      }
      // QEMU reopens inside a drained section.
      await aio.drain()
      if let key = options.values.keys.sorted().first {
        throw BlockError(.invalidArgument, "Cannot change the option '\(key)'")
      }
      if readOnly && !hasReadWriteOption && !(root.isReadOnly || reopenedReadOnly) {
        // Without -r the backend keeps its write permission.
        throw BlockError(
          .notPermitted, "Read-only block node '\(root.name)' cannot support read-write users")
      }
      if !readOnly && root.isReadOnly {
        throw BlockError(.notSupported, "Spindle cannot make a read-only image writable")
      }
      if readOnly && !reopenedReadOnly && !root.isReadOnly {
        // Dropping the write permission flushes, as QEMU's reopen does.
        try await backend.flush()
      }
      if direct != root.options.cache.direct || noFlush != root.options.cache.noFlush {
        try await root.reopenCache(direct: direct, noFlush: noFlush)
      }
    } catch {
      reporter.error(errorMessage(error))
      return -EINVAL
    }
    reopenedReadOnly = readOnly && !root.isReadOnly
    backend.writeCacheEnabled = !writethrough
    return 0
  }
}
