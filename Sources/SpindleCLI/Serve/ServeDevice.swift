import BlockCore

#if canImport(Glibc)
  import Glibc
#endif

/// qemu-nbd's kernel client: `-c DEV` (serve FILE and connect `/dev/nbdX` to
/// it) and `-d DEV` (disconnect it), as far as the device can be reached.
///
/// Spindle does not drive the kernel's NBD devices (QEMU's `NBD_SET_SOCK`,
/// `NBD_DO_IT`... ioctls): the machines it is built and tested on have no
/// `/dev/nbd*` and no nbd module. What qemu-nbd 7.2 reports when the device
/// cannot be used is reproduced (`Failed to open /dev/nbd0: No such file or
/// directory`, `Cannot open /dev/nbd0: ...`, and for a file that is not a
/// device the failing first ioctl's `Failed to set NBD socket` or `-d`'s
/// ignored ones); a real block device is refused with a clear message.
enum ServeDevice {
  /// The text for a device Spindle will not drive.
  static let unsupported = "kernel NBD devices (-c/-d) are not supported by Spindle yet"

  /// glibc's `basename` (GNU): what follows the last slash.
  static func baseName(_ path: String) -> String {
    path.split(separator: "/", omittingEmptySubsequences: false).last.map(String.init) ?? path
  }

  /// `-d DEV`: 0 after printing `DEV disconnected`, 1 after an error.
  @BlockActor
  static func disconnect(_ device: String, reporter: Reporter) -> Int32 {
    let fd = open(device, O_RDWR | O_CLOEXEC)
    guard fd >= 0 else {
      reporter.error("Cannot open \(device): \(String(cString: strerror(errno)))")
      return 1
    }
    defer { close(fd) }
    if isBlockDevice(fd) {
      reporter.error(unsupported)
      return 1
    }
    // QEMU's NBD_CLEAR_QUE, NBD_DISCONNECT and NBD_CLEAR_SOCK fail on
    // anything but an NBD device, and it ignores their errors.
    reporter.console.write("\(device) disconnected\n")
    return 0
  }

  /// `-c DEV` once the export is served: why the device cannot be
  /// connected (qemu-nbd's message), always; Spindle connects none.
  static func connectFailure(_ device: String) -> String {
    let fd = open(device, O_RDWR | O_CLOEXEC)
    guard fd >= 0 else { return "Failed to open \(device): \(String(cString: strerror(errno)))" }
    defer { close(fd) }
    // NBD_SET_SOCK, QEMU's first ioctl, fails on what is not a device.
    return isBlockDevice(fd) ? unsupported : "Failed to set NBD socket"
  }

  private static func isBlockDevice(_ fd: Int32) -> Bool {
    var info = stat()
    return fstat(fd, &info) == 0 && info.st_mode & S_IFMT == S_IFBLK
  }
}
