import BlockCore
import BlockDrivers
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// The blkdebug breakpoint commands (`break`, `remove_break`, `resume`,
/// `wait_break`). Like QEMU's `bdrv_debug_*` calls they act on the first
/// blkdebug node found from the root along file children; without one they
/// fail with ENOTSUP.
extension IOSession {
  /// The blkdebug driver under the open image, with its breakpoint messages
  /// going to the console (QEMU prints them on standard output).
  private func blkdebugDriver() -> BlkdebugDriver? {
    guard let driver = BlkdebugDriver.find(from: activeBackend.root) else { return nil }
    if driver.messageHandler == nil {
      let console = self.console
      driver.messageHandler = { console.write($0) }
    }
    return driver
  }

  /// Prints `prefix: strerror` as qemu-io does for a failed debug call.
  private func debugFailure(_ prefix: String, _ error: any Error) -> Int32 {
    console.write("\(prefix): \(errorText(error))\n")
    return -errnoCode(error)
  }

  private static let notSupported = BlockError.notSupported()

  /// `break event tag`.
  func breakCommand(_ words: [String]) -> Int32 {
    guard let driver = blkdebugDriver() else {
      return debugFailure("Could not set breakpoint", Self.notSupported)
    }
    do {
      try driver.addBreakpoint(event: words[1], tag: words[2])
    } catch {
      return debugFailure("Could not set breakpoint", error)
    }
    return 0
  }

  /// `remove_break tag`.
  func removeBreakCommand(_ words: [String]) -> Int32 {
    let prefix = "Could not remove breakpoint \(words[1])"
    guard let driver = blkdebugDriver() else { return debugFailure(prefix, Self.notSupported) }
    do {
      try driver.removeBreakpoint(tag: words[1])
    } catch {
      return debugFailure(prefix, error)
    }
    return 0
  }

  /// `resume tag`. QEMU re-enters the suspended request at once, so it runs
  /// up to its next wait before the next command; yielding once lets the
  /// resumed request do the same here.
  func resumeCommand(_ words: [String]) async -> Int32 {
    guard let driver = blkdebugDriver() else {
      return debugFailure("Could not resume request", Self.notSupported)
    }
    do {
      try driver.resume(tag: words[1])
    } catch {
      return debugFailure("Could not resume request", error)
    }
    await Task.yield()
    return 0
  }

  /// `wait_break tag`: waits until a request is suspended as `tag`.
  ///
  /// qemu-io waits forever when no request can reach the breakpoint; Spindle
  /// reports an error instead once no asynchronous request is in flight.
  func waitBreakCommand(_ words: [String]) async -> Int32 {
    let tag = words[1]
    guard let driver = blkdebugDriver() else {
      reporter.error("wait_break: no blkdebug node, no request can be suspended")
      return -ENOTSUP
    }
    var waited = false
    while !driver.isSuspended(tag: tag) {
      guard aio.isBusy else {
        if waited { aio.deliver() }
        reporter.error("wait_break: no request in flight can reach breakpoint '\(tag)'")
        return -ENOENT
      }
      waited = true
      aio.whenIdle { driver.abandonSuspensionWaits() }
      _ = await driver.waitForSuspension(tag: tag)
    }
    if waited { aio.deliver() }
    return 0
  }
}
