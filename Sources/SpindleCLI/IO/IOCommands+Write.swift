import BlockCore

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

extension IOSession {
  /// `write [-bcCfnpquz] [-P pattern | -s source_file] off len`: writes a
  /// pattern (0xcd by default), a file's contents, zeroes (`-z`, with `-u` may
  /// unmap, with `-n` no slow fallback), compressed data (`-c`) or the VM state
  /// (`-b`); `-f` asks for FUA.
  func writeCommand(_ words: [String]) async -> Int32 {
    let command = findCommand("write")!
    var parser = options(words, "bcCfnpP:qs:uz")
    var vmstate = false
    var compressed = false
    var machineReadable = false
    var quiet = false
    var zero = false
    var flags: RequestFlags = []
    var pattern: UInt8 = 0xcd
    var hasPattern = false
    var sourceFile: String?
    while let result = parser.next() {
      switch result {
      case .option("b"): vmstate = true
      case .option("c"): compressed = true
      case .option("C"): machineReadable = true
      case .option("f"): flags.insert(.fua)
      case .option("n"): flags.insert(.noFallback)
      case .option("p"): break  // Ignored for backwards compatibility.
      case .option("P"):
        guard let byte = self.pattern(parser.optarg!) else { return -EINVAL }
        pattern = byte
        hasPattern = true
      case .option("q"): quiet = true
      case .option("s"): sourceFile = parser.optarg
      case .option("u"): flags.insert(.mayUnmap)
      case .option("z"): zero = true
      default:
        usage(command)
        return -EINVAL
      }
    }
    let operands = Array(parser.operands)
    guard operands.count == 2 else {
      usage(command)
      return -EINVAL
    }
    if vmstate && zero {
      console.write("-b and -z cannot be specified at the same time\n")
      return -EINVAL
    }
    if flags.contains(.fua) && (vmstate || compressed) {
      console.write("-f and -b or -c cannot be specified at the same time\n")
      return -EINVAL
    }
    if flags.contains(.noFallback) && !zero {
      console.write("-n requires -z to be specified\n")
      return -EINVAL
    }
    if flags.contains(.mayUnmap) && !zero {
      console.write("-u requires -z to be specified\n")
      return -EINVAL
    }
    if [zero, hasPattern, sourceFile != nil].filter({ $0 }).count > 1 {
      console.write("Only one of -z, -P, and -s can be specified at the same time\n")
      return -EINVAL
    }
    guard let offset = number(operands[0]), let count = number(operands[1]) else {
      return -EINVAL
    }
    if count > maxRequestBytes && !flags.contains(.noFallback) {
      console.write("length cannot exceed \(maxRequestBytes) without -n, given \(operands[1])\n")
      return -EINVAL
    }
    if vmstate || compressed {
      if offset % 512 != 0 {
        console.write("\(offset) is not a sector-aligned value for 'offset'\n")
        return -EINVAL
      }
      if count % 512 != 0 {
        console.write("\(count) is not a sector-aligned value for 'count'\n")
        return -EINVAL
      }
    }
    var buffer: IOBuffer?
    if !zero {
      if let sourceFile {
        guard let filled = fileBuffer(count: Int(count), path: sourceFile) else { return -EINVAL }
        buffer = filled
      } else {
        buffer = IOBuffer(count: Int(count), fill: pattern, session: self)
      }
    }

    let backend = activeBackend
    let start = MonotonicInstant.now()
    var failure: (any Error)?
    do {
      if let buffer {
        if vmstate {
          try await backend.vmstate(at: offset, iov: buffer.vector, isLoad: false)
        } else if compressed {
          try await backend.writeCompressed(at: offset, from: buffer.vector)
        } else {
          try await backend.write(at: offset, from: buffer.vector, flags: flags)
        }
      } else {
        try await backend.writeZeroes(at: offset, count: count, flags: flags)
      }
    } catch {
      failure = error
    }
    let elapsed = MonotonicInstant.now().since(start)
    aio.deliver()
    if let failure {
      console.write("write failed: \(errorText(failure))\n")
      return -errnoCode(failure)
    }
    if quiet { return 0 }
    console.write(
      ioReport(
        "wrote", elapsed: elapsed, offset: offset, count: count, total: count, ops: 1,
        machineReadable: machineReadable))
    return 0
  }

  /// `writev [-Cfq] [-P pattern] off len [len..]`: a vectored write from one
  /// buffer per length.
  func writevCommand(_ words: [String]) async -> Int32 {
    let command = findCommand("writev")!
    var parser = options(words, "CfqP:")
    var machineReadable = false
    var quiet = false
    var flags: RequestFlags = []
    var pattern: UInt8 = 0xcd
    while let result = parser.next() {
      switch result {
      case .option("C"): machineReadable = true
      case .option("f"): flags.insert(.fua)
      case .option("q"): quiet = true
      case .option("P"):
        guard let byte = self.pattern(parser.optarg!) else { return -EINVAL }
        pattern = byte
      default:
        usage(command)
        return -EINVAL
      }
    }
    guard let (offset, buffer) = vectorRequest(parser.operands, command, fill: pattern) else {
      return -EINVAL
    }
    let size = Int64(buffer.count)
    let start = MonotonicInstant.now()
    var failure: (any Error)?
    do {
      try await activeBackend.write(at: offset, from: buffer.vector, flags: flags)
    } catch {
      failure = error
    }
    let elapsed = MonotonicInstant.now().since(start)
    aio.deliver()
    if let failure {
      console.write("writev failed: \(errorText(failure))\n")
      return -errnoCode(failure)
    }
    if quiet { return 0 }
    console.write(
      ioReport(
        "wrote", elapsed: elapsed, offset: offset, count: size, total: size, ops: 1,
        machineReadable: machineReadable))
    return 0
  }
}
