import Testing

/// Spindle's own behaviour of the breakpoint commands where qemu-io would
/// hang: `wait_break` with nothing that can reach the breakpoint.
@Suite struct BlkdebugCommandTests {
  private func io(_ options: String, _ commands: [String]) async -> ToolResult {
    let arguments = ["qemu-io", "--image-opts", options] + commands.flatMap { ["-c", $0] }
    return await runSpindle(arguments).masked()
  }

  private let blkdebug =
    "driver=raw,file.driver=blkdebug,file.image.driver=memory,file.image.size=1M"

  @Test func waitBreakWithoutRequestsFails() async {
    let result = await io(blkdebug, ["break pwritev A", "wait_break A", "length"])
    #expect(result.output == "1 MiB\n")
    #expect(result.error == "qemu-io: wait_break: no request in flight can reach breakpoint 'A'\n")
    #expect(result.status == 1)
  }

  @Test func waitBreakGivesUpWhenRequestsEndWithoutReachingIt() async {
    let result = await io(
      blkdebug, ["break pwritev_rmw_head A", "aio_write -q 0 512", "wait_break A", "length"])
    #expect(result.output == "1 MiB\n")
    #expect(result.error == "qemu-io: wait_break: no request in flight can reach breakpoint 'A'\n")
    #expect(result.status == 1)
  }

  @Test func waitBreakWithoutBlkdebugFails() async {
    let result = await io("driver=memory,size=1M", ["wait_break A"])
    #expect(
      result.error == "qemu-io: wait_break: no blkdebug node, no request can be suspended\n")
    #expect(result.status == 1)
  }

  @Test func breakpointOnMemoryImageSuspendsAndResumes() async {
    let result = await io(
      blkdebug,
      [
        "break pwritev_done A", "aio_write -P 7 0 512", "wait_break A", "resume A", "aio_flush",
        "read -P 7 0 512",
      ])
    #expect(
      result.output == """
        blkdebug: Suspended request 'A'
        blkdebug: Resuming request 'A'
        wrote 512/512 bytes at offset 0
        512 bytes, 1 ops; TIME
        read 512/512 bytes at offset 0
        512 bytes, 1 ops; TIME

        """)
    #expect(result.status == 0)
  }
}
