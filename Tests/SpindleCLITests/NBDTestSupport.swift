import BlockTestSupport
import Foundation
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The NBD servers the interoperability tests compare: `spindle serve` and
/// the real qemu-nbd 7.2, each as a command line to which options are added.
enum NBDServer: String, CaseIterable, Sendable {
  case spindle
  case qemu

  var command: [String] {
    switch self {
    case .spindle: [SpindleExecutable.path!, "serve"]
    case .qemu: [ToolLocator.path(of: "qemu-nbd")!]
    }
  }

  /// libnbd's socket-activation syntax: the client starts the server with a
  /// listening socket on fd 3, so there is nothing to wait for.
  func activated(_ options: [String]) -> [String] {
    ["--", "["] + command + options + ["]"]
  }
}

/// Runs an NBD client tool (nbdinfo, nbdcopy, qemu-img...) under coreutils'
/// `timeout`, so that a server that never answers fails the test instead of
/// hanging it.
func runNBDClient(_ tool: String, _ arguments: [String]) async throws -> ToolResult {
  let path = try #require(ToolLocator.path(of: tool))
  let result = try await ChildProcess.run(
    "/usr/bin/timeout", ["-k", "10", "120", path] + arguments, defaultSignals: true)
  return ToolResult(
    status: result.termination.status, output: result.output, error: result.error)
}

/// A server started in the background on a Unix socket (`-k`), for clients
/// that cannot start one themselves (qemu-io, qemu-img, raw sockets).
final class BackgroundNBDServer: @unchecked Sendable {
  let process: ChildProcess
  private(set) var socket: String
  private var ended: ChildProcess.Termination?

  /// Starts `server` with `options` and `-k socket`; returns once the
  /// socket accepts connections (polled every 50 ms, at most 60 s: the
  /// socket exists only once the server listens, as for qemu-nbd).
  convenience init(_ server: NBDServer, socket: String, options: [String]) async throws {
    try await self.init(server, listen: ["-k", socket], options: options) {
      try NBDSocket(path: socket)
    }
    self.socket = socket
  }

  /// Starts `server` with `options` on TCP 127.0.0.1:`port`.
  convenience init(_ server: NBDServer, port: UInt16, options: [String]) async throws {
    try await self.init(server, listen: ["-b", "127.0.0.1", "-p", "\(port)"], options: options) {
      try NBDSocket(port: port)
    }
  }

  /// Starts any server `command` that listens on the Unix socket `socket`
  /// (nbdkit's `-U`), returning once the socket accepts connections.
  convenience init(command: [String], socket: String) async throws {
    try await self.init(command: command) { try NBDSocket(path: socket) }
    self.socket = socket
  }

  private convenience init(
    _ server: NBDServer, listen: [String], options: [String], connect: () throws -> NBDSocket
  ) async throws {
    try await self.init(command: server.command + listen + options, connect: connect)
  }

  private init(command: [String], connect: () throws -> NBDSocket) async throws {
    socket = ""
    process = try ChildProcess(command[0], Array(command.dropFirst()), defaultSignals: true)
    for _ in 0..<1200 {
      if let connection = try? connect() {
        connection.close()
        return
      }
      try await Task.sleep(for: .milliseconds(50))
    }
    process.send(SIGKILL)
    _ = await process.wait()
    throw POSIXError(.ETIMEDOUT)
  }

  /// A server the test did not end (it failed early) is killed and reaped.
  deinit {
    guard ended == nil else { return }
    kill(process.pid, SIGKILL)
    var status: Int32 = 0
    while waitpid(process.pid, &status, 0) < 0 && errno == EINTR {}
  }

  /// Waits for the server to end by itself (bounded: killed after 60 s).
  func waitForExit() async -> ChildProcess.Termination {
    if let ended { return ended }
    let pid = process.pid
    let watchdog = Task {
      try await Task.sleep(for: .seconds(60))
      kill(pid, SIGKILL)
    }
    let termination = await process.wait()
    watchdog.cancel()
    ended = termination
    return termination
  }

  /// Sends SIGTERM and waits for the end.
  func terminate() async -> ChildProcess.Termination {
    if ended == nil { process.send(SIGTERM) }
    return await waitForExit()
  }

  /// The server's standard error once it has ended.
  func errorOutput() async -> String {
    guard let handle = process.error else { return "" }
    return await ChildProcess.readAll(handle)
  }
}

/// A blocking client socket with a receive timeout, for raw protocol tests.
final class NBDSocket {
  private var fd: Int32

  /// Connects to a Unix socket; throws when nobody listens.
  init(path: String) throws {
    fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EIO) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
      close()  // a throwing init still runs deinit: close exactly once
      throw POSIXError(.ENAMETOOLONG)
    }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
      raw.copyBytes(from: bytes)
      raw[bytes.count] = 0
    }
    let status = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
      }
    }
    guard status == 0 else {
      let code = errno
      close()  // a throwing init still runs deinit: close exactly once
      throw POSIXError(POSIXErrorCode(rawValue: code) ?? .EIO)
    }
    var timeout = timeval(tv_sec: 30, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
  }

  private init(descriptor: Int32) { fd = descriptor }

  /// Connects to a Unix socket without waiting for room in the server's
  /// listen backlog: nil when the kernel refuses the connection because the
  /// backlog is full (EAGAIN). The socket returned blocks, with the receive
  /// timeout of ``init(path:)``.
  static func connectWithoutWaiting(path: String) throws -> NBDSocket? {
    let fd = socket(
      AF_UNIX,
      Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EIO) }
    let connection = NBDSocket(descriptor: fd)
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
      throw POSIXError(.ENAMETOOLONG)
    }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
      raw.copyBytes(from: bytes)
      raw[bytes.count] = 0
    }
    let status = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
      }
    }
    if status != 0 {
      if errno == EAGAIN { return nil }
      throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
    }
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
    var timeout = timeval(tv_sec: 30, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return connection
  }

  /// How a connection went on, as a client waiting to read sees it.
  enum Outcome: Equatable, CustomStringConvertible {
    /// The server sent bytes.
    case data
    /// The server closed the connection (end of file).
    case endOfFile
    /// The connection was reset (ECONNRESET).
    case reset
    /// Another error, or the receive timeout, by errno.
    case failed(Int32)

    var description: String {
      switch self {
      case .data: "data"
      case .endOfFile: "end of file"
      case .reset: "reset"
      case .failed(let code): "errno \(code)"
      }
    }
  }

  /// Waits (up to the receive timeout, on a thread of its own as
  /// ``receive(_:)``) for the first byte or the end.
  func outcome() async -> Outcome {
    let fd = fd
    return await withCheckedContinuation { continuation in
      Thread {
        var byte: UInt8 = 0
        let got = recv(fd, &byte, 1, 0)
        let outcome: Outcome =
          got > 0 ? .data : got == 0 ? .endOfFile : errno == ECONNRESET ? .reset : .failed(errno)
        continuation.resume(returning: outcome)
      }.start()
    }
  }

  /// Connects to TCP `port` on 127.0.0.1; throws when nobody listens.
  init(port: UInt16) throws {
    fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EIO) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    let status = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
      }
    }
    guard status == 0 else {
      let code = errno
      close()  // a throwing init still runs deinit: close exactly once
      throw POSIXError(POSIXErrorCode(rawValue: code) ?? .EIO)
    }
  }

  /// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0,
  /// then released).
  static func freePort() throws -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    defer { Glibc.close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let status = withUnsafeMutablePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, length) == 0 ? getsockname(fd, $0, &length) : -1
      }
    }
    guard status == 0 else { throw POSIXError(.EADDRINUSE) }
    return UInt16(bigEndian: address.sin_port)
  }

  deinit { close() }

  func close() {
    if fd >= 0 { Glibc.close(fd) }
    fd = -1
  }

  /// Sends every byte (false if the peer is gone).
  @discardableResult
  func send(_ bytes: [UInt8]) -> Bool {
    var done = 0
    while done < bytes.count {
      let sent = bytes[done...].withUnsafeBytes {
        Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
      }
      if sent <= 0 { return false }
      done += sent
    }
    return true
  }

  /// Exactly `count` bytes, or nil at end of file (or after the timeout).
  /// The blocking reads run on a thread of their own: a test waiting for a
  /// server must not hold one of Swift's few pool threads for seconds (the
  /// in-process clients and servers of other tests need them).
  func receive(_ count: Int) async -> [UInt8]? {
    let fd = fd
    return await withCheckedContinuation { continuation in
      Thread {
        var result = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
          let got = result[done...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
          if got <= 0 {
            continuation.resume(returning: nil)
            return
          }
          done += got
        }
        continuation.resume(returning: result)
      }.start()
    }
  }
}

/// Big-endian helpers for building and reading NBD messages in tests.
extension Array where Element == UInt8 {
  static func be<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    Swift.withUnsafeBytes(of: value.bigEndian) { Array($0) }
  }

  func be<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
    var value: T = 0
    for byte in self[offset..<offset + MemoryLayout<T>.size] { value = value << 8 | T(byte) }
    return value
  }
}
