import BlockCore

#if canImport(Glibc)
  import Glibc
#endif

/// qemu-nbd's `--fork`, without `fork()`.
///
/// QEMU forks, daemonizes the child with its standard error on a pipe, and
/// the parent copies what comes through that pipe to its own standard
/// error until the child closes it: once the server listens and the export
/// exists (the child then puts the original standard error back), or when
/// the child exits. The parent's status is 1 when anything came, else 0.
///
/// A Swift process cannot fork safely once the runtime has started threads
/// (the child would inherit locks held by threads that do not exist in it),
/// and by the time options are parsed the concurrency runtime and swift-nio
/// may have. So the parent runs its own executable again (`/proc/self/exe`,
/// the same arguments) with `posix_spawn`: a new session (QEMU's `daemon()`
/// calls `setsid`), standard input and output on /dev/null, standard error
/// on the pipe, and the environment variable ``environmentKey`` naming a
/// descriptor that holds the caller's standard error and the number of
/// socket-activation descriptors the parent found (the daemon's pid no
/// longer matches `LISTEN_PID`). The daemon parses the same command line,
/// sees the variable, and serves instead of spawning; ``ready()`` is its
/// signal, as QEMU's `dup2(old_stderr, STDERR_FILENO)`.
enum ServeDaemon {
  /// The environment variable that marks the daemon: `FD:ACTIVATED`.
  static let environmentKey = "SPINDLE_NBD_DAEMON"

  /// The caller's standard error while this process is a daemon that has
  /// not signalled readiness yet.
  nonisolated(unsafe) private static var savedError: Int32 = -1

  /// When this process is the daemon: the socket-activation count its
  /// parent found; the variable is removed from the environment. nil
  /// otherwise.
  static func adopt() -> Int? {
    guard Spindle.processArguments != nil, let value = getenv(environmentKey) else { return nil }
    let text = String(cString: value)
    unsetenv(environmentKey)
    let parts = text.split(separator: ":")
    guard parts.count == 2, let fd = Int32(parts[0]), fd > 2, let activated = Int(parts[1]),
      fcntl(fd, F_GETFD) >= 0
    else { return nil }
    _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    savedError = fd
    return activated
  }

  /// Whether this process is a daemon still starting.
  static var isStarting: Bool { savedError >= 0 }

  /// The daemon serves: standard error goes back to the caller's, which
  /// closes the pipe and lets the parent exit 0.
  static func ready() {
    guard savedError >= 0 else { return }
    dup2(savedError, 2)
    close(savedError)
    savedError = -1
  }

  /// The parent's side: starts the daemon, relays its messages until it is
  /// ready or gone; the exit status (1 when it reported anything).
  @BlockActor
  static func spawnAndWait(activated: Int, reporter: Reporter) -> Int32 {
    guard let arguments = Spindle.processArguments else {
      reporter.error("Failed to fork: \(String(cString: strerror(ENOTSUP)))")
      return 1
    }
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else {
      reporter.error("Error setting up communication pipe: \(String(cString: strerror(errno)))")
      return 1
    }
    for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    // The caller's standard error, inherited by the daemon (no CLOEXEC).
    let saved = fcntl(2, F_DUPFD, 10)
    guard saved >= 0 else {
      reporter.error("Failed to fork: \(String(cString: strerror(errno)))")
      for fd in fds { close(fd) }
      return 1
    }
    defer { close(saved) }
    let status = spawn(arguments, errorPipe: fds[1], saved: saved, activated: activated)
    close(fds[1])
    defer { close(fds[0]) }
    guard status == 0 else {
      reporter.error("Failed to fork: \(String(cString: strerror(status)))")
      return 1
    }
    reporter.console.flush()
    var errors = false
    var buffer = [UInt8](repeating: 0, count: 1024)
    while true {
      let count = buffer.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
      if count < 0 && errno == EINTR { continue }
      if count < 0 {
        reporter.error("Cannot read from daemon: \(String(cString: strerror(errno)))")
        return 1
      }
      if count == 0 { break }
      errors = true
      var done = 0
      while done < count {
        let written = buffer[done..<count].withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        if written < 0 && errno == EINTR { continue }
        if written <= 0 { return 1 }
        done += written
      }
    }
    return errors ? 1 : 0
  }

  /// `posix_spawn` of this executable as the daemon; 0 or an errno.
  private static func spawn(_ arguments: [String], errorPipe: Int32, saved: Int32, activated: Int)
    -> Int32
  {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDWR, 0)
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_RDWR, 0)
    posix_spawn_file_actions_adddup2(&actions, errorPipe, 2)
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    // The daemon starts with the signal mask this process inherited (the
    // runtime's threads block signals), in a session of its own.
    var mask = Spindle.startupSignalMask
    posix_spawnattr_setsigmask(&attributes, &mask)
    let setsid: Int32 = 0x80  // glibc's POSIX_SPAWN_SETSID (not imported)
    posix_spawnattr_setflags(&attributes, Int16(Int32(POSIX_SPAWN_SETSIGMASK) | setsid))
    var environment: [String] = []
    var cursor = environ
    while let entry = cursor.pointee {
      let text = String(cString: entry)
      if !text.hasPrefix(environmentKey + "=") { environment.append(text) }
      cursor += 1
    }
    environment.append("\(environmentKey)=\(saved):\(activated)")
    let argv = arguments.map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    let envp = environment.map { strdup($0) } + [nil]
    defer { for pointer in envp { free(pointer) } }
    var pid: pid_t = 0
    return posix_spawn(&pid, "/proc/self/exe", &actions, &attributes, argv, envp)
  }
}
