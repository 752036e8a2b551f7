import BlockCore
import CFileSupport
import SystemPackage

/// The fallocate(2) modes a file still accepts. A mode that failed with
/// ENOTSUP is dropped and never tried again on that file (QEMU's
/// `has_discard`, `has_write_zeroes`, `has_fallocate`).
struct FallocateSupport: OptionSet, Sendable {
  let rawValue: UInt8
  /// FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE (discard, unmapping zero-writes).
  static let punchHole = FallocateSupport(rawValue: 1)
  /// FALLOC_FL_ZERO_RANGE.
  static let zeroRange = FallocateSupport(rawValue: 2)
  /// Mode 0: allocate (and extend).
  static let allocate = FallocateSupport(rawValue: 4)
  /// Every mode, before anything failed.
  static let all: FallocateSupport = [.punchHole, .zeroRange, .allocate]
}

/// What one allocation extent query found at an offset (QEMU's `find_allocation`).
enum FileExtent: Sendable, Equatable {
  /// Data from the offset up to `end` (the next hole, or end of file).
  case data(end: Int64)
  /// A hole from the offset up to `end` (the next data).
  case hole(end: Int64)
  /// A hole that runs to the end of the file, or the offset is past it.
  case trailingHole
  /// The file system could not tell.
  case unknown
}

extension PosixFile {
  private static let punchMode = cfs_falloc_punch_hole() | cfs_falloc_keep_size()

  /// Makes `length` bytes at `offset` read as zeroes without writing them
  /// (QEMU's `handle_aiocb_write_zeroes[_unmap]`): with `mayUnmap` punch a
  /// hole first, then FALLOC_FL_ZERO_RANGE, then punch and reallocate, then
  /// (past the end of file) plain allocation. Returns whether the range is
  /// zeroed and which modes turned out unsupported; a false result means the
  /// caller must write zeroes itself.
  func writeZeroes(offset: Int64, length: Int64, mayUnmap: Bool, support: FallocateSupport)
    throws -> (zeroed: Bool, unsupported: FallocateSupport)
  {
    var lost: FallocateSupport = []
    var usable: FallocateSupport { support.subtracting(lost) }
    if mayUnmap && usable.contains(.punchHole) {
      do {
        try fallocate(mode: Self.punchMode, offset: offset, length: length)
        // A hole keeps the file's size: grow it when the range ends past it.
        if try status().size < offset + length {
          guard usable.contains(.allocate) else { return (false, lost) }
          do {
            try fallocate(mode: 0, offset: offset + length - 1, length: 1)
          } catch let error as Errno where error == BlockError.notSupportedCode {
            lost.insert(.allocate)
            return (false, lost)
          }
        }
        return (true, lost)
      } catch let error as Errno {
        switch error {
        case BlockError.notSupportedCode: lost.insert(.punchHole)
        case .invalidArgument, .resourceBusy: break
        default: throw error
        }
      }
    }
    if usable.contains(.zeroRange) {
      do {
        try fallocate(mode: cfs_falloc_zero_range(), offset: offset, length: length)
        return (true, lost)
      } catch let error as Errno {
        switch error {
        case BlockError.notSupportedCode: lost.insert(.zeroRange)
        // Some file systems refuse unaligned ranges: try the next rung.
        case .invalidArgument: break
        default: throw error
        }
      }
    }
    if usable.isSuperset(of: [.punchHole, .allocate]) {
      do {
        try fallocate(mode: Self.punchMode, offset: offset, length: length)
        do {
          try fallocate(mode: 0, offset: offset, length: length)
          return (true, lost)
        } catch let error as Errno where error == BlockError.notSupportedCode {
          lost.insert(.allocate)
        }
      } catch let error as Errno {
        switch error {
        case BlockError.notSupportedCode: lost.insert(.punchHole)
        case .invalidArgument: break
        default: throw error
        }
      }
    }
    if usable.contains(.allocate), try offset >= status().size {
      do {
        try fallocate(mode: 0, offset: offset, length: length)
        return (true, lost)
      } catch let error as Errno where error == BlockError.notSupportedCode {
        lost.insert(.allocate)
      }
    }
    return (false, lost)
  }

  /// Deallocates `length` bytes at `offset` (FALLOC_FL_PUNCH_HOLE |
  /// FALLOC_FL_KEEP_SIZE); ENOTSUP when the file system cannot.
  func punchHole(offset: Int64, length: Int64) throws {
    try fallocate(mode: Self.punchMode, offset: offset, length: length)
  }

  /// The allocation extent at `start`, from lseek(SEEK_DATA) and
  /// lseek(SEEK_HOLE) (QEMU's `find_allocation`).
  func extent(at start: Int64) -> FileExtent {
    let data: Int64
    do {
      data = try seek(start, whence: cfs_seek_data())
    } catch let error as Errno where error == .noSuchAddressOrDevice {
      return .trailingHole
    } catch {
      return .unknown
    }
    if data < start { return .unknown }
    if data > start { return .hole(end: data) }
    let hole: Int64
    do {
      hole = try seek(start, whence: cfs_seek_hole())
    } catch let error as Errno where error == .noSuchAddressOrDevice {
      // Truncated behind our back since SEEK_DATA.
      return .trailingHole
    } catch {
      return .unknown
    }
    // hole == start: a hole was dug since SEEK_DATA; know nothing.
    return hole > start ? .data(end: hole) : .unknown
  }
}
