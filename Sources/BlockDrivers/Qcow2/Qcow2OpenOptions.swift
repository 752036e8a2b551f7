import BlockCore

/// The qcow2 runtime options QEMU's `qcow2_update_options_prepare` reads:
/// overlap checks, metadata cache sizes, the cache cleaning interval and
/// discard passthrough. Taken from the node's options before the image is
/// read; sizes are resolved against the header by ``cacheSizes(for:)``.
struct Qcow2OpenOptions {
  /// QEMU's `DEFAULT_L2_CACHE_MAX_SIZE` on Linux.
  static let defaultL2CacheMax: Int64 = 32 << 20
  /// QEMU's `MIN_L2_CACHE_SIZE`, in cache entries.
  static let minL2CacheEntries: Int64 = 2
  /// QEMU's `MIN_REFCOUNT_CACHE_SIZE`, in clusters.
  static let minRefcountCacheEntries: Int64 = 4
  /// QEMU's `DEFAULT_CACHE_CLEAN_INTERVAL`, in seconds.
  static let defaultCacheCleanInterval: Int64 = 600

  /// `overlap-check` and its switches.
  var overlapChecks: Qcow2OverlapSections = .cached
  /// `cache-size`.
  var cacheSize: Int64?
  /// `l2-cache-size`.
  var l2CacheSize: Int64?
  /// `refcount-cache-size`.
  var refcountCacheSize: Int64?
  /// `l2-cache-entry-size`.
  var l2CacheEntrySize: Int64?
  /// `cache-clean-interval`, in seconds (0: never).
  var cacheCleanInterval = defaultCacheCleanInterval
  /// `pass-discard-request`, `pass-discard-snapshot`, `pass-discard-other`
  /// as given (the request default depends on the node's discard mode).
  var passDiscardRequest: Bool?
  var passDiscardSnapshot = true
  var passDiscardOther = false
  /// `lazy-refcounts` as given (overrides the image's feature bit).
  var lazyRefcounts: Bool?

  /// Takes the options from `options`, with QEMU's messages for bad values.
  static func take(from options: inout DriverOptions) throws -> Qcow2OpenOptions {
    var result = Qcow2OpenOptions()
    result.overlapChecks = try Qcow2OverlapSections.take(from: &options)
    result.cacheSize = try options.takeSize("cache-size")
    result.l2CacheSize = try options.takeSize("l2-cache-size")
    result.refcountCacheSize = try options.takeSize("refcount-cache-size")
    result.l2CacheEntrySize = try options.takeSize("l2-cache-entry-size")
    if let interval = try options.takeInt("cache-clean-interval") {
      if interval < 0 || interval > Int64(UInt32.max) {
        throw BlockError(.invalidArgument, "Cache clean interval too big")
      }
      result.cacheCleanInterval = interval
    }
    if options["pass-discard-request"] != nil {
      result.passDiscardRequest = try options.takeBool("pass-discard-request", default: false)
    }
    result.passDiscardSnapshot = try options.takeBool("pass-discard-snapshot", default: true)
    result.passDiscardOther = try options.takeBool("pass-discard-other", default: false)
    if options["lazy-refcounts"] != nil {
      result.lazyRefcounts = try options.takeBool("lazy-refcounts", default: false)
    }
    return result
  }

  /// The metadata cache capacities for an image with `header` (QEMU's
  /// `read_cache_sizes` and the entry-count limits after it): the L2 cache
  /// in bytes and in entries of `entrySize` bytes, the refcount cache in
  /// clusters.
  func cacheSizes(for header: Qcow2Header) throws -> (
    l2Bytes: Int64, entrySize: Int64, l2Entries: Int64, refcountBlocks: Int64
  ) {
    let clusterSize = header.clusterSize
    let diskSize = (Int64(header.size) + 511) / 512 * 512
    let maxL2Entries = (diskSize + clusterSize - 1) / clusterSize
    let maxL2Cache = (maxL2Entries * 8 + clusterSize - 1) / clusterSize * clusterSize
    let minRefcountCache = Self.minRefcountCacheEntries * clusterSize
    var l2 = min(maxL2Cache, l2CacheSize ?? Self.defaultL2CacheMax)
    var refcount = refcountCacheSize ?? 0
    if let combined = cacheSize {
      if l2CacheSize != nil && refcountCacheSize != nil {
        throw BlockError(
          .invalidArgument,
          "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time")
      } else if let l2Setting = l2CacheSize, l2Setting > combined {
        throw BlockError(.invalidArgument, "l2-cache-size may not exceed cache-size")
      } else if refcount > combined {
        throw BlockError(.invalidArgument, "refcount-cache-size may not exceed cache-size")
      }
      if l2CacheSize != nil {
        refcount = combined - l2
      } else if refcountCacheSize != nil {
        l2 = combined - refcount
      } else if combined >= maxL2Cache + minRefcountCache {
        l2 = maxL2Cache
        refcount = combined - l2
      } else {
        refcount = min(combined, minRefcountCache)
        l2 = combined - refcount
      }
    }
    var entrySize = l2CacheEntrySize ?? clusterSize
    if l2 < maxL2Cache && l2CacheEntrySize == nil { entrySize = min(clusterSize, 4096) }
    if entrySize < 512 || entrySize > clusterSize || entrySize & (entrySize - 1) != 0 {
      throw BlockError(
        .invalidArgument,
        "L2 cache entry size must be a power of two between 512 and the cluster size (\(clusterSize))"
      )
    }
    let l2Entries = max(Self.minL2CacheEntries, l2 / entrySize)
    if l2Entries > Int64(Int32.max) {
      throw BlockError(.invalidArgument, "L2 cache size too big")
    }
    let refcountBlocks = max(Self.minRefcountCacheEntries, refcount / clusterSize)
    if refcountBlocks > Int64(Int32.max) {
      throw BlockError(.invalidArgument, "Refcount cache size too big")
    }
    return (l2, entrySize, l2Entries, refcountBlocks)
  }
}

extension Qcow2Driver {
  /// Applies the runtime options to a freshly opened driver: overlap checks,
  /// discard passthrough (`pass-discard-request` defaults to the node's
  /// `discard=unmap`), the L2 cache capacity (whole tables: the bytes QEMU
  /// would give its cache, at least QEMU's minimum of two entries), the
  /// refcount cache (QEMU's size when one is asked for; Spindle's
  /// write-through block cache keeps 64 blocks otherwise) and the cache
  /// cleaning interval.
  func apply(_ options: Qcow2OpenOptions, discardUnmap: Bool) throws {
    let sizes = try options.cacheSizes(for: header)
    if options.lazyRefcounts == true && header.version < 3 {
      throw BlockError(
        .invalidArgument,
        "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level")
    }
    safety.overlapChecks = options.overlapChecks
    safety.lazyRefcounts = options.lazyRefcounts
    safety.discardPassthrough = Qcow2DiscardPassthrough(
      request: options.passDiscardRequest ?? discardUnmap,
      snapshot: options.passDiscardSnapshot, other: options.passDiscardOther)
    let tables = max(Qcow2OpenOptions.minL2CacheEntries, sizes.l2Bytes / header.clusterSize)
    l2Cache = Qcow2L2Cache(capacity: Int(tables))
    if options.cacheSize != nil || options.refcountCacheSize != nil {
      refcounts?.blockCacheCapacity = Int(sizes.refcountBlocks)
    }
    safety.cacheCleaning = Qcow2CacheCleaning(interval: options.cacheCleanInterval)
  }

  /// Drops the cached L2 tables not used since the previous cleaning, and
  /// the cached refcount blocks, once the cleaning interval has passed
  /// (QEMU's `cache_clean_timer_cb`, run lazily when a request arrives).
  func cleanCachesIfDue() {
    guard let mark = safety.cacheCleaning.due(useClock: l2Cache.useClock) else { return }
    cleanCaches(unusedSince: mark)
  }

  /// Drops cached L2 tables not used since `mark` and the cached refcount
  /// blocks, except what is not on disk yet (QEMU's
  /// `qcow2_cache_clean_unused` skips dirty entries): refcount blocks whose
  /// lazy updates are deferred or whose write failed, and L2 tables whose
  /// write failed, which close writes again from the cache.
  func cleanCaches(unusedSince mark: UInt64) {
    l2Cache.dropUnused(since: mark, keeping: safety.unwrittenL2Tables)
    refcounts?.dropCleanBlocks()
  }
}

/// When the metadata caches are cleaned (`cache-clean-interval`).
struct Qcow2CacheCleaning {
  /// Seconds between cleanings; 0 never cleans.
  var interval: Int64 = Qcow2OpenOptions.defaultCacheCleanInterval
  /// When the last cleaning (or the open) happened.
  private var last = ContinuousClock.now
  /// The L2 cache's use clock at the last cleaning.
  private var lastUseClock: UInt64 = 0

  /// Cleaning every `interval` seconds from now.
  init(interval: Int64 = Qcow2OpenOptions.defaultCacheCleanInterval) {
    self.interval = interval
  }

  /// When a cleaning is due: records it and returns the use clock of the
  /// previous one (entries not used since then go).
  mutating func due(useClock: UInt64) -> UInt64? {
    guard interval > 0 else { return nil }
    let now = ContinuousClock.now
    guard now - last >= .seconds(interval) else { return nil }
    defer {
      last = now
      lastUseClock = useClock
    }
    return lastUseClock
  }
}
