import BlockDrivers

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// How `qemu-img info` shows internal snapshots: QEMU's `bdrv_snapshot_dump`
/// table and the `SnapshotInfo` JSON objects.
extension Qcow2SnapshotInfo {
  /// The table's header line (without a newline).
  static let tableHeader =
    "ID".padded(-10) + "TAG".padded(-17) + "VM SIZE".padded(8) + "DATE".padded(20)
    + "VM CLOCK".padded(13) + "ICOUNT".padded(11)

  /// The snapshot's table line (without a newline): the date in local time,
  /// the VM clock as `HH:MM:SS.mmm`.
  var tableLine: String {
    let seconds = vmClockNanoseconds / 1_000_000_000
    let clock = cFormat(
      "%02d:%02d:%02d.%03d", Int32(truncatingIfNeeded: seconds / 3600),
      Int32(truncatingIfNeeded: (seconds / 60) % 60), Int32(truncatingIfNeeded: seconds % 60),
      Int32(truncatingIfNeeded: (vmClockNanoseconds / 1_000_000) % 1000))
    let icountText = icount.map { String(Int64(bitPattern: $0)) } ?? ""
    return id.padded(-9) + " " + name.padded(-16) + " " + qemuSizeText(vmStateSize).padded(8)
      + localDateText.padded(20) + clock.padded(13) + icountText.padded(11)
  }

  /// The snapshot's date as `%Y-%m-%d %H:%M:%S` in the local time zone.
  private var localDateText: String {
    var time = time_t(dateSeconds)
    var broken = tm()
    guard localtime_r(&time, &broken) != nil else { return "" }
    var buffer = [CChar](repeating: 0, count: 64)
    let length = strftime(&buffer, buffer.count, "%Y-%m-%d %H:%M:%S", &broken)
    return String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }

  /// The snapshot as a JSON object, members in QEMU 7.2's order.
  var qobject: QObject {
    var members: [(String, QObject)] = []
    if let icount { members.append(("icount", .int(Int64(bitPattern: icount)))) }
    members += [
      ("vm-clock-nsec", .int(Int64(vmClockNanoseconds % 1_000_000_000))),
      ("name", .string(name)),
      ("date-sec", .int(Int64(dateSeconds))),
      ("date-nsec", .int(Int64(dateNanoseconds))),
      ("vm-clock-sec", .int(Int64(vmClockNanoseconds / 1_000_000_000))),
      ("id", .string(id)),
      ("vm-state-size", .int(Int64(bitPattern: vmStateSize))),
    ]
    return .dict(members)
  }
}

extension Qcow2BitmapInfo {
  /// The bitmap as a `format-specific` JSON object, members in QEMU 7.2's
  /// order (flags `in-use` before `auto`).
  var qobject: QObject {
    var flags: [QObject] = []
    if inUse { flags.append(.string("in-use")) }
    if auto { flags.append(.string("auto")) }
    return .dict([
      ("flags", .list(flags)), ("name", .string(name)),
      ("granularity", .int(Int64(bitPattern: granularity))),
    ])
  }
}

extension String {
  /// The string padded with spaces to `width` bytes as printf's `%*s` pads:
  /// on the left for a positive width, on the right for a negative one.
  fileprivate func padded(_ width: Int) -> String {
    let fill = String(repeating: " ", count: max(0, abs(width) - utf8.count))
    return width < 0 ? self + fill : fill + self
  }
}
