/// QEMU's `RateLimit` (`include/qemu/ratelimit.h`), used by `convert -r` and
/// `commit -r`: throughput is accounted in time slices (100 ms by default),
/// each allowed `bytesPerSecond * slice` bytes. Once a slice's quota is used
/// up, the caller is told to wait until the slice, stretched in proportion
/// to what was dispatched, has ended; a new slice then starts.
///
/// The limiter only computes delays from the times it is given, so that its
/// schedule can be checked without a clock; ``ThrottledClock`` sleeps them.
struct RateLimiter: Sendable {
  /// QEMU's SLICE_TIME: 100 ms.
  static let defaultSlice: UInt64 = 100_000_000

  /// The bytes a slice may carry (0: no limit).
  let sliceQuota: UInt64
  /// A slice's length in nanoseconds.
  let sliceNanoseconds: UInt64
  private var sliceStart: UInt64 = 0
  private var sliceEnd: UInt64 = 0
  private var dispatched: UInt64 = 0

  /// A limiter to `bytesPerSecond` (0: unlimited) with slices of
  /// `sliceNanoseconds`; a non-zero rate allows at least one byte a slice.
  init(bytesPerSecond: UInt64, sliceNanoseconds: UInt64 = RateLimiter.defaultSlice) {
    self.sliceNanoseconds = sliceNanoseconds
    if bytesPerSecond == 0 {
      sliceQuota = 0
    } else {
      let quota = Double(bytesPerSecond) * Double(sliceNanoseconds) / 1e9
      sliceQuota = quota >= Double(UInt64.max) ? UInt64.max : max(UInt64(quota), 1)
    }
  }

  /// Whether the limiter limits anything.
  var isLimited: Bool { sliceQuota > 0 }

  /// Records that `bytes` are being sent at time `now` (nanoseconds) and
  /// returns how long to wait, in nanoseconds, before sending more (QEMU's
  /// `ratelimit_calculate_delay`). `bytes` 0 asks whether the current
  /// (stretched) slice still blocks.
  mutating func delay(dispatching bytes: UInt64, at now: UInt64) -> UInt64 {
    guard sliceQuota > 0 else { return 0 }
    if sliceEnd < now {
      // The previous, possibly stretched, slice is over.
      sliceStart = now
      sliceEnd = now &+ sliceNanoseconds
      dispatched = 0
    }
    dispatched &+= bytes
    if dispatched < sliceQuota { return 0 }
    // Over quota: the slice lasts as many slices as were dispatched.
    let slices = Double(dispatched) / Double(sliceQuota)
    let stretched = slices * Double(sliceNanoseconds)
    sliceEnd = sliceStart &+ (stretched >= Double(UInt64.max) ? UInt64.max / 2 : UInt64(stretched))
    return sliceEnd > now ? sliceEnd - now : 0
  }
}

/// Sleeps a copy task for a ``RateLimiter``'s delays on the real clock.
/// Sleeping here is the product's throttling, not synchronisation.
actor ThrottledClock {
  private var limiter: RateLimiter
  private let start = ContinuousClock.now

  /// A clock limiting to `bytesPerSecond` (0: never waits).
  init(bytesPerSecond: UInt64) {
    limiter = RateLimiter(bytesPerSecond: bytesPerSecond)
  }

  /// Nanoseconds since the clock was made.
  private var now: UInt64 {
    let elapsed = ContinuousClock.now - start
    let (seconds, attoseconds) = elapsed.components
    return UInt64(max(seconds, 0)) * 1_000_000_000 + UInt64(max(attoseconds, 0) / 1_000_000_000)
  }

  /// Accounts `bytes` and sleeps as long as the limiter says (commit:
  /// account a piece, then sleep before the next).
  func dispatch(_ bytes: Int64) async throws {
    let wait = limiter.delay(dispatching: UInt64(max(bytes, 0)), at: now)
    if wait > 0 { try await Task.sleep(nanoseconds: wait) }
  }

  /// Sleeps until the current slice no longer blocks, then returns
  /// (convert: wait, then account the run with ``processed(_:)``).
  func waitForSlice() async throws {
    while true {
      let wait = limiter.delay(dispatching: 0, at: now)
      if wait == 0 { return }
      try await Task.sleep(nanoseconds: wait)
    }
  }

  /// Accounts `bytes` without waiting (QEMU's
  /// `block_job_ratelimit_processed_bytes`).
  func processed(_ bytes: Int64) {
    _ = limiter.delay(dispatching: UInt64(max(bytes, 0)), at: now)
  }
}
