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

extension IOSession {
  /// `length`: the image length as a human size (`1 MiB`).
  func lengthCommand() -> Int32 {
    let backend = activeBackend
    guard backend.root.isInserted else {
      console.write("getlength: \(Errno.describe(BlockError.noMediumCode))\n")
      return -BlockError.noMediumCode.rawValue
    }
    console.write("\(humanSize(Double(backend.length)))\n")
    return 0
  }

  /// `info`: the format name (printed twice for protocol drivers, which QEMU
  /// names both as format and protocol), then the cluster size and VM state
  /// offset for formats that report them. Like QEMU, a driver without that
  /// information makes the command fail silently.
  func infoCommand() -> Int32 {
    let root = activeBackend.root
    console.write("format name: \(root.driver.formatName)\n")
    // blkdebug is a filter that QEMU also registers as a protocol.
    if root.capabilities.kind == .protocolDriver || root.driver.formatName == "blkdebug" {
      console.write("format name: \(root.driver.formatName)\n")
    }
    // Filters answer with their child's information.
    var answering = root
    while answering.capabilities.kind == .filter, let child = answering.file {
      answering = child
    }
    // QEMU's bdrv_get_info: raw and file answer with zeroes; null-co and the
    // others have no answer (ENOTSUP). Spindle has no such driver interface
    // yet, so the answers are those of QEMU's drivers.
    if let qcow2 = answering.driver as? Qcow2Driver {
      printQcow2Info(qcow2.header)
      return 0
    }
    // rbd answers with its object size (`qemu_rbd_getinfo`), also through raw.
    let rbd = answering.driver as? RBDDriver ?? answering.file?.driver as? RBDDriver
    if let rbd, answering.driver is RBDDriver || answering.driver is RawDriver {
      console.write("cluster size: \(humanSize(Double(rbd.objectSize)))\n")
      console.write("vm state offset: \(humanSize(0))\n")
      return 0
    }
    guard ["raw", "file"].contains(answering.driver.formatName) else { return -ENOTSUP }
    console.write("cluster size: \(humanSize(0))\n")
    console.write("vm state offset: \(humanSize(0))\n")
    return 0
  }

  /// Whether `offset` is allocated in the top node and for how many bytes that
  /// holds (QEMU's `bdrv_is_allocated`: 0 bytes at or past the end).
  ///
  /// Unlike reads and writes, `alloc` and `map` do not report finished
  /// asynchronous requests: QEMU's block status queries complete without
  /// waiting (file-posix calls lseek directly), so its event loop does not run.
  private func isAllocated(_ offset: Int64, _ bytes: Int64) async throws -> (Bool, Int64) {
    let status = try await activeBackend.root.blockStatus(
      offset: offset, bytes: bytes, wantZero: false)
    return (status.flags.contains(.allocated), status.count)
  }

  /// `alloc offset [count]`: how many of `count` (default 512) bytes are
  /// allocated in the top node; the count shrinks at the end of the image.
  func allocCommand(_ words: [String]) async -> Int32 {
    guard let start = number(words[1]) else { return -EINVAL }
    var count: Int64 = 512
    if words.count == 3 {
      guard let value = number(words[2]) else { return -EINVAL }
      count = value
    }
    var offset = start
    var remaining = count
    var allocated: Int64 = 0
    while remaining > 0 {
      let isAllocated: Bool
      let length: Int64
      do {
        (isAllocated, length) = try await self.isAllocated(offset, remaining)
      } catch {
        console.write("is_allocated failed: \(errorText(error))\n")
        return -errnoCode(error)
      }
      offset += length
      remaining -= length
      if isAllocated { allocated += length }
      if length == 0 {
        count -= remaining
        remaining = 0
      }
    }
    console.write("\(allocated)/\(count) bytes allocated at offset \(humanSize(Double(start)))\n")
    return 0
  }

  /// The allocation status at `offset` and how far it extends, merging
  /// consecutive answers (qemu-io's `map_is_allocated`).
  private func allocationRun(_ offset: Int64, _ bytes: Int64) async throws -> (Bool, Int64) {
    let (first, firstLength) = try await isAllocated(offset, bytes)
    var total = firstLength
    var offset = offset
    var bytes = bytes
    var length = firstLength
    while bytes > 0 {
      offset += length
      bytes -= length
      guard let (next, nextLength) = try? await isAllocated(offset, bytes),
        next == first, nextLength > 0
      else { break }
      total += nextLength
      length = nextLength
    }
    return (first, total)
  }

  /// `map`: the allocated and unallocated runs of the top node.
  ///
  ///     1 MiB (0x100000) bytes     allocated at offset 0 bytes (0x0)
  func mapCommand() async -> Int32 {
    var offset: Int64 = 0
    var bytes = activeBackend.length
    while bytes > 0 {
      let allocated: Bool
      let length: Int64
      do {
        (allocated, length) = try await allocationRun(offset, bytes)
      } catch {
        reporter.error("Failed to get allocation status: \(errorText(error))")
        return -errnoCode(error)
      }
      if length == 0 {
        reporter.error("Unexpected end of image")
        return -EIO
      }
      let state = allocated ? "    allocated" : "not allocated"
      console.write(
        "\(humanSize(Double(length))) (0x\(String(length, radix: 16))) bytes \(state) "
          + "at offset \(humanSize(Double(offset))) (0x\(String(offset, radix: 16)))\n")
      offset += length
      bytes -= length
    }
    return 0
  }
}
