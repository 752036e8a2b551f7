#if canImport(Glibc)
  import Glibc
#endif

/// qemu-nbd's `--selinux-label` (Debian's qemu-nbd 7.2 is built with
/// SELinux): the label applies to the sockets the thread creates next,
/// through `/proc/thread-self/attr/sockcreate` (libselinux's
/// `setsockcreatecon_raw`). Without SELinux in the kernel the write fails
/// (EINVAL) and qemu-nbd stops with `Cannot set SELinux socket create
/// context to LABEL: Invalid argument`, as Spindle does. Where the label is
/// accepted Spindle clears it again and refuses: its listening socket is
/// made on a swift-nio thread, which the label would not reach.
enum ServeSELinux {
  /// Nil when the label can be used (never, see above), else the error.
  static func applyLabel(_ label: String) -> String? {
    guard write(label) else {
      return
        "Cannot set SELinux socket create context to \(label): \(String(cString: strerror(errno)))"
    }
    _ = write(nil)
    return "SELinux socket labels are not supported by Spindle yet"
  }

  private static func write(_ label: String?) -> Bool {
    let fd = open("/proc/thread-self/attr/sockcreate", O_RDWR | O_CLOEXEC)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    // libselinux writes the context with its terminating NUL (nothing to clear).
    var bytes: [UInt8] = label.map { Array($0.utf8) + [0] } ?? []
    let written = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    return written == bytes.count
  }
}
