import Foundation

/// A temporary directory with raw images for one test, removed when the
/// fixture is released.
final class ImageFixture: Sendable {
  let directory: URL

  init() throws {
    directory = FileManager.default.temporaryDirectory
      .appendingPathComponent("spindle-cli-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
  }

  deinit {
    try? FileManager.default.removeItem(at: directory)
  }

  /// The path of a file in the directory.
  func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

  /// Creates a raw image of `size` bytes: sparse, with a 64 KiB run of
  /// non-repeating bytes at 128 KiB and a 4 KiB run of 0x5a at 512 KiB (when
  /// they fit), so that reads, dumps and maps see data and holes.
  @discardableResult
  func makeImage(_ name: String, size: Int = 1 << 20) throws -> String {
    let path = path(name)
    _ = FileManager.default.createFile(atPath: path, contents: nil)
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    defer { try? handle.close() }
    try handle.truncate(atOffset: UInt64(size))
    if size >= 192 << 10 {
      try handle.seek(toOffset: 128 << 10)
      try handle.write(
        contentsOf: Data((0..<(64 << 10)).map { UInt8(truncatingIfNeeded: $0 * 7 + $0 / 251) }))
    }
    if size >= 516 << 10 {
      try handle.seek(toOffset: 512 << 10)
      try handle.write(contentsOf: Data(repeating: 0x5a, count: 4096))
    }
    return path
  }

  /// Copies an image.
  func copy(_ source: String, to name: String) throws -> String {
    let destination = path(name)
    try FileManager.default.copyItem(atPath: source, toPath: destination)
    return destination
  }
}
