import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// The write end of the pipe the SIGTERM/SIGINT handler writes to.
nonisolated(unsafe) private var shutdownPipeWrite: Int32 = -1

/// Calls `onSignal` (on a thread of its own) when SIGTERM or SIGINT arrives,
/// as qemu-nbd's `termsig_handler` ends its main loop: a handler that only
/// writes a byte to a pipe (async-signal-safe), and a thread reading it.
func onShutdownSignal(_ onSignal: @escaping @Sendable () -> Void) {
  var fds: [Int32] = [-1, -1]
  guard pipe(&fds) == 0 else { return }
  for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
  shutdownPipeWrite = fds[1]
  var action = sigaction()
  action.__sigaction_handler.sa_handler = { _ in
    var byte: UInt8 = 1
    _ = write(shutdownPipeWrite, &byte, 1)
  }
  sigemptyset(&action.sa_mask)
  action.sa_flags = SA_RESTART
  sigaction(SIGTERM, &action, nil)
  sigaction(SIGINT, &action, nil)
  let readEnd = fds[0]
  let thread = Thread {
    var byte: UInt8 = 0
    while read(readEnd, &byte, 1) < 0 && errno == EINTR {}
    onSignal()
  }
  thread.start()
}
