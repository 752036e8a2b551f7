import BlockCore

/// Sparse in-memory bytes: fixed-size pages created on first write; missing
/// pages read as zeroes. The storage behind the memory and recording drivers.
public final class SparseStore: @unchecked Sendable {
  /// Bytes per page.
  public let pageSize: Int64
  private var pages: [Int64: AlignedBuffer] = [:]

  /// Creates an empty store.
  public init(pageSize: Int64 = 65536) {
    precondition(pageSize > 0)
    self.pageSize = pageSize
  }

  /// Number of pages holding data (memory used).
  public var pageCount: Int { pages.count }

  /// Copies `iov.count` bytes at `offset` into `iov`.
  public func read(at offset: Int64, into iov: IOVector) {
    forEachPage(offset, Int64(iov.count)) { page, inPage, done, count in
      if let buffer = pages[page] {
        buffer.withUnsafeBytes { bytes in
          iov.copyIn(
            UnsafeRawBufferPointer(rebasing: bytes[Int(inPage)..<Int(inPage + count)]),
            at: Int(done))
        }
      } else {
        iov.fill(0, at: Int(done), count: Int(count))
      }
    }
  }

  /// Copies `iov` into the store at `offset`.
  public func write(at offset: Int64, from iov: IOVector) {
    forEachPage(offset, Int64(iov.count)) { page, inPage, done, count in
      let buffer = pages[page] ?? newPage(page)
      buffer.withUnsafeMutableBytes { bytes in
        iov.copyOut(
          to: UnsafeMutableRawBufferPointer(rebasing: bytes[Int(inPage)..<Int(inPage + count)]),
          at: Int(done))
      }
    }
  }

  /// Makes a range read as zeroes, freeing whole pages.
  public func zero(at offset: Int64, count: Int64) {
    forEachPage(offset, count) { page, inPage, _, length in
      if inPage == 0 && length == pageSize {
        pages[page] = nil
      } else if let buffer = pages[page] {
        buffer.withUnsafeMutableBytes { bytes in
          _ = UnsafeMutableRawBufferPointer(rebasing: bytes[Int(inPage)..<Int(inPage + length)])
            .initializeMemory(as: UInt8.self, repeating: 0)
        }
      }
    }
  }

  private func newPage(_ page: Int64) -> AlignedBuffer {
    let buffer = AlignedBuffer(count: Int(pageSize), alignment: 4096, zeroed: true)
    pages[page] = buffer
    return buffer
  }

  private func forEachPage(
    _ offset: Int64, _ count: Int64, _ body: (Int64, Int64, Int64, Int64) -> Void
  ) {
    var done: Int64 = 0
    while done < count {
      let position = offset + done
      let page = position / pageSize
      let inPage = position % pageSize
      let length = min(pageSize - inPage, count - done)
      body(page, inPage, done, length)
      done += length
    }
  }
}
