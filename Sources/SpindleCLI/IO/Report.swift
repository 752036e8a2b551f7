#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// A point on the monotonic clock (`CLOCK_MONOTONIC`, as qemu-io reads it).
struct MonotonicInstant: Sendable, Equatable {
  var seconds: Int
  var nanoseconds: Int

  /// Now.
  static func now() -> MonotonicInstant {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return MonotonicInstant(seconds: Int(time.tv_sec), nanoseconds: Int(time.tv_nsec))
  }

  /// The clock's origin. qemu-io's `aio_write -z` never starts its stopwatch,
  /// so its report measures from here (the system's uptime).
  static let origin = MonotonicInstant(seconds: 0, nanoseconds: 0)

  /// `self - earlier` (qemu-io's `tsub`).
  func since(_ earlier: MonotonicInstant) -> MonotonicInstant {
    var seconds = self.seconds - earlier.seconds
    var nanoseconds = self.nanoseconds - earlier.nanoseconds
    if nanoseconds < 0 {
      nanoseconds += 1_000_000_000
      seconds -= 1
    }
    return MonotonicInstant(seconds: seconds, nanoseconds: nanoseconds)
  }

  /// As seconds.
  var totalSeconds: Double { Double(seconds) + Double(nanoseconds) / 1e9 }
}

/// The statistics qemu-io prints after an I/O command (its `print_report`):
///
///     wrote 4096/4096 bytes at offset 0
///     4 KiB, 1 ops; 00.00 sec (1.816 MiB/sec and 464.8942 ops/sec)
///
/// or, with `-C`, one machine-readable line `bytes,ops,H:MM:SS.ss,bytes/s,ops/s`.
func ioReport(
  _ operation: String, elapsed: MonotonicInstant, offset: Int64, count: Int64, total: Int64,
  ops: Int, machineReadable: Bool
) -> String {
  let time = elapsedText(
    seconds: elapsed.seconds, nanoseconds: elapsed.nanoseconds, verbose: machineReadable)
  let seconds = elapsed.totalSeconds
  if machineReadable {
    return "\(total),\(ops),\(time),"
      + cFormat("%.3f,%.3f\n", Double(total) / seconds, Double(ops) / seconds)
  }
  return "\(operation) \(total)/\(count) bytes at offset \(offset)\n"
    + "\(humanSize(Double(total))), \(ops) ops; \(time) "
    + "(\(humanSize(Double(total) / seconds))/sec and "
    + cFormat("%.4f", Double(ops) / seconds) + " ops/sec)\n"
}
