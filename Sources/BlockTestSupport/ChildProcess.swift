import Foundation

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A program the tests run (qemu-img, qemu-io, the built `spindle`), started
/// with `posix_spawn` and its standard streams on pipes.
///
/// Foundation's `Process.run()` is not used: on Linux (Swift 6.3) it reads
/// past a `dirent` while listing `/proc/self/fd` and crashes the test process
/// now and then when many descriptors are open
/// (swiftlang/swift-corelibs-foundation#5472). Pipes are made close-on-exec
/// so that no other child inherits them (which would hold their ends open).
public final class ChildProcess: @unchecked Sendable {
  /// The child's process id.
  public let pid: pid_t
  /// The write end of the child's standard input (nil when it reads
  /// /dev/null).
  public let input: FileHandle?
  /// The read end of the child's standard output (and standard error when
  /// they were merged).
  public let output: FileHandle
  /// The read end of the child's standard error, unless merged into
  /// ``output``.
  public let error: FileHandle?

  /// How a child ended.
  public struct Termination: Sendable, Equatable {
    /// The exit status, or the signal number when ``signaled``.
    public var status: Int32
    /// Whether a signal ended the child.
    public var signaled: Bool
  }

  /// The sanitizer settings of this process (`ASAN_OPTIONS`, `LSAN_OPTIONS`,
  /// `TSAN_OPTIONS`, `UBSAN_OPTIONS`) added to `environment` where it does not
  /// set them.
  static func withSanitizerOptions(_ environment: [String: String]) -> [String: String] {
    var result = environment
    for name in ["ASAN_OPTIONS", "LSAN_OPTIONS", "TSAN_OPTIONS", "UBSAN_OPTIONS"]
    where result[name] == nil {
      if let value = getenv(name) { result[name] = String(cString: value) }
    }
    return result
  }

  /// Starts `executable` with `arguments` (`argv[0]` is `executable`
  /// itself), the current environment unless `environment` replaces it
  /// (the sanitizers' `*SAN_OPTIONS` are kept even then, so that a child
  /// built with a sanitizer runs with the test run's settings).
  /// `pipeInput`: give the child a pipe for standard input (else
  /// /dev/null); `mergeError`: standard error goes to the output pipe;
  /// `defaultSignals`: the child starts with no signal blocked and SIGTERM,
  /// SIGINT, SIGHUP and SIGPIPE at their default actions, as from a shell
  /// (else it inherits the spawning thread's mask, which on the Swift
  /// runtime's threads blocks most signals: servers that must end on SIGTERM
  /// need this).
  public init(
    _ executable: String, _ arguments: [String], environment: [String: String]? = nil,
    pipeInput: Bool = false, mergeError: Bool = false, defaultSignals: Bool = false
  ) throws {
    func makePipe() throws -> (read: Int32, write: Int32) {
      var fds: [Int32] = [-1, -1]
      guard pipe(&fds) == 0 else { throw Self.error(errno) }
      // (Glibc's module has no pipe2; a child spawned by another thread in
      // between would only hold the pipe open until it exits.)
      for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
      return (fds[0], fds[1])
    }
    // A write to a child that has exited must fail, not kill the tests.
    if pipeInput { signal(SIGPIPE, SIG_IGN) }
    let stdin = pipeInput ? try makePipe() : nil
    let stdout = try makePipe()
    let stderr = mergeError ? nil : try makePipe()

    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    if let stdin {
      posix_spawn_file_actions_adddup2(&actions, stdin.read, 0)
    } else {
      posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    }
    posix_spawn_file_actions_adddup2(&actions, stdout.write, 1)
    posix_spawn_file_actions_adddup2(&actions, stderr?.write ?? stdout.write, 2)
    // The child gets its three streams and nothing else: descriptors that
    // other tests' threads hold at this moment without close-on-exec (swift-nio
    // creates its sockets without it; a probe socket of the NBD tests) would
    // otherwise live on in the child and keep their connections open after
    // their owners closed them.
    // (glibc 2.34's posix_spawn_file_actions_addclosefrom_np, which Swift's
    // Glibc module does not declare.)
    typealias AddCloseFrom =
      @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    if let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") {
      _ = unsafeBitCast(symbol, to: AddCloseFrom.self)(&actions, 3)
    }

    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    let variables = environment.map { given in
      Self.withSanitizerOptions(given).map { "\($0.key)=\($0.value)" }
    }
    let envp = variables.map { $0.map { strdup($0) } + [nil] }
    defer { for pointer in envp ?? [] { free(pointer) } }

    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    if defaultSignals {
      var empty = sigset_t()
      sigemptyset(&empty)
      posix_spawnattr_setsigmask(&attributes, &empty)
      var defaults = sigset_t()
      sigemptyset(&defaults)
      for number in [SIGTERM, SIGINT, SIGHUP, SIGPIPE] { sigaddset(&defaults, number) }
      posix_spawnattr_setsigdefault(&attributes, &defaults)
      posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    }
    var pid: pid_t = 0
    let status =
      if let envp {
        posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
      } else {
        posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
      }
    // The child has its copies; the parent keeps only its own ends.
    if let stdin { close(stdin.read) }
    close(stdout.write)
    if let stderr { close(stderr.write) }
    guard status == 0 else {
      if let stdin { close(stdin.write) }
      close(stdout.read)
      if let stderr { close(stderr.read) }
      throw Self.error(status)
    }
    self.pid = pid
    self.input = stdin.map { FileHandle(fileDescriptor: $0.write, closeOnDealloc: true) }
    self.output = FileHandle(fileDescriptor: stdout.read, closeOnDealloc: true)
    self.error = stderr.map { FileHandle(fileDescriptor: $0.read, closeOnDealloc: true) }
  }

  private static func error(_ code: Int32) -> POSIXError {
    POSIXError(POSIXErrorCode(rawValue: code) ?? .EIO)
  }

  /// Sends `signal` to the child.
  public func send(_ signal: Int32) { kill(pid, signal) }

  /// Waits for the child to end (on a thread of its own: `waitpid` blocks).
  public func wait() async -> Termination {
    await withCheckedContinuation { continuation in
      Thread { [pid] in
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let signal = status & 0x7f
        continuation.resume(
          returning: signal == 0
            ? Termination(status: (status >> 8) & 0xff, signaled: false)
            : Termination(status: signal, signaled: true))
      }.start()
    }
  }

  /// Everything `handle` yields until end of file (read on a thread of its
  /// own: the reads block).
  public static func readAll(_ handle: FileHandle) async -> String {
    await withCheckedContinuation { continuation in
      Thread {
        let data = handle.readDataToEndOfFile()
        continuation.resume(returning: String(decoding: data, as: UTF8.self))
      }.start()
    }
  }

  /// Runs a program to completion with `input` on its standard input; its
  /// termination, standard output and standard error (empty when merged).
  public static func run(
    _ executable: String, _ arguments: [String], input: String? = nil,
    environment: [String: String]? = nil, mergeError: Bool = false, defaultSignals: Bool = false
  ) async throws -> (termination: Termination, output: String, error: String) {
    let child = try ChildProcess(
      executable, arguments, environment: environment, pipeInput: input != nil,
      mergeError: mergeError, defaultSignals: defaultSignals)
    if let handle = child.input, let input {
      Thread {
        try? handle.write(contentsOf: Data(input.utf8))
        try? handle.close()
      }.start()
    }
    async let output = readAll(child.output)
    let errorHandle = child.error
    async let error: String = {
      guard let errorHandle else { return "" }
      return await readAll(errorHandle)
    }()
    let (out, err) = await (output, error)
    return (await child.wait(), out, err)
  }
}
