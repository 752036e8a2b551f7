import BlockCore

@testable import BlockDrivers

/// Opens arbitrary bytes as a writable qcow2 image over a memory disk, runs a
/// fixed script (reads, an aligned and an unaligned write, a zero-write, a
/// discard, a flush), closes it and checks it.
///
/// Invariants beyond "no crash": every read returns what the block status
/// says is there (zeroes, or the file's bytes at the mapped offset); the
/// written patterns read back; an image that checked clean before has no
/// corruption after the script (leaks are allowed: QEMU leaks on some such
/// images too); a complete repair leaves an image that checks clean.
enum Qcow2IOTarget {
  /// Inputs larger than this are skipped.
  static let maximumInput = 1 << 20
  /// How much of the guest disk is read and verified.
  static let verifiedPrefix: Int64 = 2 << 20

  static func run(_ input: [UInt8]) {
    guard input.count <= maximumInput else { return }
    runBlocking { await exercise(input) }
  }

  @BlockActor
  static func exercise(_ input: [UInt8]) async {
    let image = MemoryImage(input)
    let before = await image.check([])
    guard let node = await image.open(readOnly: false) else { return }
    let length = node.length
    var offsets = Array(stride(from: Int64(0), to: min(length, verifiedPrefix), by: 65536))
    if length > verifiedPrefix { offsets.append(length - min(length, 65536)) }
    for offset in offsets {
      await verifyRead(node, offset: offset, count: min(65536, length - offset))
    }
    await writeScript(node, length: length)
    await node.close()

    if let before, before.isClean {
      guard let after = await image.check([]) else {
        fuzzCheck(false, "a clean image no longer opens after the script")
        return
      }
      fuzzCheck(
        after.failure == nil && after.corruptions == 0 && after.checkErrors == 0,
        "the script corrupted a clean image: \(after.messages)")
      // Leaks are allowed: QEMU leaks too on some images that check clean.
    }
    await Qcow2CheckTarget.repairThenCheck(input)
  }

  /// Reads `count` bytes at `offset` and compares them with what block status
  /// maps there.
  @BlockActor
  static func verifyRead(_ node: BlockNode, offset: Int64, count: Int64) async {
    guard count > 0,
      let bytes = await attempt({ try await node.read(at: offset, count: Int(count)) })
    else { return }
    fuzzCheck(bytes.count == count, "read of \(count) bytes returned \(bytes.count)")
    var position = offset
    while position < offset + count {
      guard
        let status = await attempt({
          try await node.blockStatus(
            offset: position, bytes: offset + count - position, wantZero: true)
        }), status.count > 0
      else { return }
      let piece = Int(min(status.count, offset + count - position))
      let start = Int(position - offset)
      let seen = bytes[start..<start + piece]
      if status.flags.contains(.zero) || !status.flags.contains(.data) {
        fuzzCheck(
          seen.allSatisfy { $0 == 0 },
          "bytes \(position)+\(piece) read non-zero where block status says \(status.flags)")
      } else if status.flags.contains(.offsetValid), let file = status.file,
        let stored = await attempt({ try await file.read(at: status.mapOffset, count: piece) })
      {
        fuzzCheck(
          Array(seen) == stored,
          "bytes \(position)+\(piece) differ from the file's at \(status.mapOffset)")
      }
      position += Int64(piece)
    }
  }

  /// The fixed request script; returns whether every request succeeded.
  @BlockActor
  @discardableResult
  static func writeScript(_ node: BlockNode, length: Int64) async -> Bool {
    guard length >= 4 << 10 else { return true }
    var succeeded = true
    let aligned = (offset: Int64(0), count: Int(min(length, 65536)), pattern: UInt8(0xa5))
    let unaligned = (
      offset: (length / 2) & ~511 | 7, count: Int(min(4097, length / 4)), pattern: UInt8(0x5a)
    )
    let zeroed = (offset: (length / 4) & ~4095, count: min(65536, length / 8) & ~4095)
    let discarded = (offset: (length / 8 * 7) & ~4095, count: min(65536, length / 8))
    var written: [(offset: Int64, count: Int, pattern: UInt8)] = []
    for write in [aligned, unaligned] {
      if await attempt({
        try await node.write(
          at: write.offset, bytes: [UInt8](repeating: write.pattern, count: write.count))
      }) != nil {
        written.append(write)
      } else {
        succeeded = false
      }
    }
    var zeroWritten = false
    if zeroed.count > 0 {
      zeroWritten =
        await attempt({
          try await node.writeZeroes(at: zeroed.offset, count: zeroed.count, flags: [.mayUnmap])
        }) != nil
    }
    if zeroed.count > 0 && !zeroWritten { succeeded = false }
    if await attempt({ try await node.discard(at: discarded.offset, count: discarded.count) })
      == nil
    {
      succeeded = false
    }
    if await attempt({ try await node.flush() }) == nil { succeeded = false }

    func overlaps(_ offset: Int64, _ count: Int64, _ other: Int64, _ otherCount: Int64) -> Bool {
      offset < other + otherCount && other < offset + count
    }
    for write in written
    where !overlaps(write.offset, Int64(write.count), zeroed.offset, zeroed.count)
      && !overlaps(write.offset, Int64(write.count), discarded.offset, discarded.count)
    {
      guard let bytes = await attempt({ try await node.read(at: write.offset, count: write.count) })
      else { continue }
      let other = written.first {
        $0.offset != write.offset
          && overlaps(write.offset, Int64(write.count), $0.offset, Int64($0.count))
      }
      if other == nil {
        fuzzCheck(
          bytes.allSatisfy { $0 == write.pattern },
          "a write of \(write.count) bytes at \(write.offset) does not read back")
      }
    }
    if zeroWritten,
      let bytes = await attempt({ try await node.read(at: zeroed.offset, count: Int(zeroed.count)) }
      )
    {
      fuzzCheck(
        bytes.allSatisfy { $0 == 0 }, "a zero-write at \(zeroed.offset) does not read zeroes")
    }
    return succeeded
  }
}

/// Runs a request; nil when it failed with a ``BlockError`` (any other error
/// is a finding).
@BlockActor
func attempt<T>(_ body: () async throws -> T) async -> T? {
  do {
    return try await body()
  } catch is BlockError {
    return nil
  } catch {
    fuzzCheck(false, "a request threw a non-BlockError: \(error)")
    return nil
  }
}
