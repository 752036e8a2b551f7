import BlockCore

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

extension IOSession {
  /// `read [-bCpqv] [-P pattern [-s off] [-l len]] off len`: reads, optionally
  /// checks a pattern over the whole buffer or a sub-range, dumps and reports.
  func readCommand(_ words: [String]) async -> Int32 {
    let command = findCommand("read")!
    var parser = options(words, "bCl:pP:qs:v")
    var vmstate = false
    var machineReadable = false
    var quiet = false
    var dump = false
    var pattern: UInt8?
    var patternOffset: Int64 = 0
    var patternCount: Int64?
    var hasPatternOffset = false
    while let result = parser.next() {
      switch result {
      case .option("b"): vmstate = true
      case .option("C"): machineReadable = true
      case .option("l"):
        guard let value = number(parser.optarg!) else { return -EINVAL }
        patternCount = value
      case .option("p"): break  // Ignored for backwards compatibility.
      case .option("P"):
        guard let byte = self.pattern(parser.optarg!) else { return -EINVAL }
        pattern = byte
      case .option("q"): quiet = true
      case .option("s"):
        guard let value = number(parser.optarg!) else { return -EINVAL }
        patternOffset = value
        hasPatternOffset = true
      case .option("v"): dump = true
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
    guard let offset = number(operands[0]), let count = number(operands[1]) else {
      return -EINVAL
    }
    if count > maxRequestBytes {
      console.write("length cannot exceed \(maxRequestBytes), given \(operands[1])\n")
      return -EINVAL
    }
    if pattern == nil && (patternCount != nil || hasPatternOffset) {
      usage(command)
      return -EINVAL
    }
    let checkedCount = patternCount ?? count - patternOffset
    let (checkedEnd, overflow) = checkedCount.addingReportingOverflow(patternOffset)
    if checkedCount < 0 || overflow || checkedEnd > count {
      console.write("pattern verification range exceeds end of read data\n")
      return -EINVAL
    }
    if vmstate {
      if offset % 512 != 0 {
        console.write("\(offset) is not a sector-aligned value for 'offset'\n")
        return -EINVAL
      }
      if count % 512 != 0 {
        console.write("\(count) is not a sector-aligned value for 'count'\n")
        return -EINVAL
      }
    }

    let buffer = IOBuffer(count: Int(count), fill: 0xab, session: self)
    let start = MonotonicInstant.now()
    var failure: (any Error)?
    do {
      if vmstate {
        try await activeBackend.vmstate(at: offset, iov: buffer.vector, isLoad: true)
      } else {
        try await activeBackend.read(at: offset, into: buffer.vector)
      }
    } catch {
      failure = error
    }
    let elapsed = MonotonicInstant.now().since(start)
    aio.deliver()
    if let failure {
      console.write("read failed: \(errorText(failure))\n")
      return -errnoCode(failure)
    }
    var status: Int32 = 0
    if let pattern,
      !buffer.matches(pattern, from: Int(patternOffset), count: Int(checkedCount))
    {
      console.write(
        "Pattern verification failed at offset \(offset + patternOffset), "
          + "\(checkedCount) bytes\n")
      status = -EINVAL
    }
    if quiet { return status }
    if dump { console.write(buffer.withUnsafeBytes { hexdump($0, offset: offset) }) }
    console.write(
      ioReport(
        "read", elapsed: elapsed, offset: offset, count: count, total: count, ops: 1,
        machineReadable: machineReadable))
    return status
  }

  /// `readv [-Cqv] [-P pattern] off len [len..]`: a vectored read into one
  /// buffer per length.
  func readvCommand(_ words: [String]) async -> Int32 {
    let command = findCommand("readv")!
    var parser = options(words, "CP:qv")
    var machineReadable = false
    var quiet = false
    var dump = false
    var pattern: UInt8?
    while let result = parser.next() {
      switch result {
      case .option("C"): machineReadable = true
      case .option("P"):
        guard let byte = self.pattern(parser.optarg!) else { return -EINVAL }
        pattern = byte
      case .option("q"): quiet = true
      case .option("v"): dump = true
      default:
        usage(command)
        return -EINVAL
      }
    }
    guard let (offset, buffer) = vectorRequest(parser.operands, command, fill: 0xab) else {
      return -EINVAL
    }
    let size = Int64(buffer.count)
    let start = MonotonicInstant.now()
    var failure: (any Error)?
    do {
      try await activeBackend.read(at: offset, into: buffer.vector)
    } catch {
      failure = error
    }
    let elapsed = MonotonicInstant.now().since(start)
    aio.deliver()
    if let failure {
      console.write("readv failed: \(errorText(failure))\n")
      return -errnoCode(failure)
    }
    var status: Int32 = 0
    if let pattern, !buffer.matches(pattern) {
      console.write("Pattern verification failed at offset \(offset), \(size) bytes\n")
      status = -EINVAL
    }
    if quiet { return status }
    if dump { console.write(buffer.withUnsafeBytes { hexdump($0, offset: offset) }) }
    console.write(
      ioReport(
        "read", elapsed: elapsed, offset: offset, count: size, total: size, ops: 1,
        machineReadable: machineReadable))
    return status
  }
}
