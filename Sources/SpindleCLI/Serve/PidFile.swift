#if canImport(Glibc)
  import Glibc
#endif

/// qemu-nbd's `--pid-file`: the server's process ID and a newline, written
/// once it listens and the export exists; the file is left in place at exit
/// (as qemu-nbd 7.2 leaves it).
enum PidFile {
  /// Writes the pid to `path`; the error text is qemu-nbd's on failure.
  static func write(to path: String) -> String? {
    let fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
    guard fd >= 0 else { return "Could not create '\(path)': \(String(cString: strerror(errno)))" }
    defer { close(fd) }
    let text = Array("\(getpid())\n".utf8)
    let written = text.withUnsafeBytes {
      ftruncate(fd, 0) == 0 ? Glibc.write(fd, $0.baseAddress, $0.count) : -1
    }
    guard written == text.count else {
      return "Failed to write pid file '\(path)': \(String(cString: strerror(errno)))"
    }
    return nil
  }
}
