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
  /// Builds QEMU's option set — the `-o` options, `read-only` from `-r`/`-w`
  /// (else the node's current mode), `cache.direct` and `cache.no-flush`
  /// from `-c` (else the current ones) — and reopens the graph with it
  /// (``BlockNode/reopen(_:)``: options not given keep their values, a
  /// failed reopen changes nothing). Without `-r` the backend keeps the
  /// write permission it holds, so `-o read-only=on` fails as in QEMU
  /// ("Read-only block node '...' cannot support read-write users"). The
  /// write cache (writeback or
  /// writethrough) is the backend's and changes only when the reopen
  /// succeeded.
  func reopenCommand(_ words: [String]) async -> Int32 {
    let command = findCommand("reopen")!
    let backend = activeBackend
    let root = backend.root
    var readOnly = root.isReadOnly
    var direct = root.options.cache.direct
    var noFlush = root.options.cache.noFlush
    var writethrough = !backend.writeCacheEnabled
    var hasReadWriteOption = false
    var hasCacheOption = false
    var options: [String: String] = [:]
    var parser = self.options(words, "c:o:rw")
    while let result = parser.next() {
      switch result {
      case .option("c"):
        guard let mode = parseCacheMode(parser.optarg!) else {
          reporter.error("Invalid cache option: \(parser.optarg!)")
          return -EINVAL
        }
        direct = mode.direct
        noFlush = mode.noFlush
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
    // QEMU completes the requests in flight before reopening. The backend
    // of a writable node keeps its write permission unless `-r` (or the
    // node being read-only already) drops it.
    await aio.drain()
    let writers = !readOnly && !root.isReadOnly
    if options["read-only"] != nil {
      if hasReadWriteOption {
        reporter.error("Cannot set both -r/-w and 'read-only'")
        return -EINVAL
      }
    } else {
      options["read-only"] = readOnly ? "on" : "off"
    }
    if options["cache.direct"] != nil || options["cache.no-flush"] != nil {
      if hasCacheOption {
        reporter.error("Cannot set both -c and the cache options")
        return -EINVAL
      }
    } else {
      options["cache.direct"] = direct ? "on" : "off"
      options["cache.no-flush"] = noFlush ? "on" : "off"
    }
    do {
      try await root.reopen(options, keepsWriters: writers)
    } catch {
      reporter.error(errorMessage(error))
      return -EINVAL
    }
    backend.writeCacheEnabled = !writethrough
    return 0
  }
}
