import BlockTestSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The test harness's child processes.
struct ChildProcessTests {
  /// A descriptor the parent holds without close-on-exec (as swift-nio's
  /// sockets are) does not reach the child: its only descriptors are its
  /// three streams (and the one `ls` opens to list them).
  @Test func childrenInheritOnlyTheirStreams() async throws {
    var fds: [Int32] = [-1, -1]
    try #require(pipe(&fds) == 0)
    defer { for fd in fds { close(fd) } }
    let listed = try await ChildProcess.run("/bin/ls", ["/proc/self/fd"])
    #expect(listed.termination.status == 0)
    let numbers = listed.output.split(separator: "\n").compactMap { Int32($0) }
    #expect(!numbers.contains(fds[0]) && !numbers.contains(fds[1]), "\(numbers)")
    #expect(numbers.count == 4, "\(numbers)")
  }
}
