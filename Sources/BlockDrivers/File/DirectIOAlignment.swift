import BlockCore
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Finds the alignments an O_DIRECT file needs (QEMU's `raw_probe_alignment`).
///
/// The kernel refuses misaligned O_DIRECT reads with EINVAL, so the probe
/// reads 1, 512, 1024, 2048 and 4096 bytes from offset 0 into an aligned
/// buffer and takes the first size that works as the request alignment, then
/// reads a block into buffers offset by those sizes to find the memory
/// alignment. Success at 1 byte usually means the read never reached the disk
/// (an empty file, a hole), so it falls back to the safe 4096 (or the page
/// size when larger).
enum DirectIOAlignment {
  static let candidates = [1, 512, 1024, 2048, 4096]

  /// The largest alignment probed: 4096 or the page size.
  static var maxAlignment: Int { max(4096, Int(sysconf(Int32(_SC_PAGESIZE)))) }

  /// Probes `file` (opened with O_DIRECT); runs on an I/O thread.
  static func probe(_ file: PosixFile) throws(BlockError) -> (request: Int64, buffer: Int) {
    let maxAlign = maxAlignment
    let buffer = AlignedBuffer(count: 2 * maxAlign, alignment: maxAlign)
    let (request, memory) = buffer.withUnsafeMutableBytes { bytes in
      var request = 0
      for align in candidates
      where readWorks(file, UnsafeMutableRawBufferPointer(rebasing: bytes[0..<align])) {
        request = align == 1 ? maxAlign : align
        break
      }
      var memory = 0
      for align in candidates
      where readWorks(
        file, UnsafeMutableRawBufferPointer(rebasing: bytes[align..<align + maxAlign]))
      {
        memory = align == 1 ? request : align
        break
      }
      return (request, memory)
    }
    guard request > 0, memory > 0 else {
      throw BlockError(
        .invalidArgument, "Could not find working O_DIRECT alignment\nTry cache.direct=off")
    }
    return (Int64(request), memory)
  }

  /// Whether a read into `buffer` at offset 0 passes the kernel's alignment
  /// check; errors other than EINVAL (a failing disk) say nothing about it.
  private static func readWorks(_ file: PosixFile, _ buffer: UnsafeMutableRawBufferPointer) -> Bool
  {
    do {
      _ = try file.readOnce(into: buffer, at: 0)
      return true
    } catch let error as Errno {
      return error != .invalidArgument
    } catch {
      return true
    }
  }
}
