import BlockCore
import Foundation
import SystemPackage
import Testing

@testable import BlockDrivers

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// A directory of scratch files for one test, removed when the value goes away.
final class ScratchDirectory: Sendable {
  let path: String

  init() throws {
    let base = FileManager.default.temporaryDirectory.path
    var template = Array("\(base)/spindle-file-XXXXXX".utf8CString)
    guard let created = mkdtemp(&template) else {
      throw BlockError(.ioError, "mkdtemp failed in \(base)")
    }
    path = String(cString: created)
  }

  deinit { try? FileManager.default.removeItem(atPath: path) }

  /// A path in the directory.
  func file(_ name: String) -> String { "\(path)/\(name)" }

  /// Creates a file with `bytes`, then (sparsely) extends it to `size` when larger.
  @discardableResult
  func makeFile(_ name: String, bytes: [UInt8] = [], size: Int64? = nil) throws -> String {
    let path = file(name)
    guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else {
      throw BlockError(.ioError, "cannot create \(path)")
    }
    if let size, size > Int64(bytes.count) { try setLength(path, size) }
    return path
  }
}

/// truncate(2) on a path (test setup that bypasses the driver).
func setLength(_ path: String, _ length: Int64) throws {
  guard truncate(path, off_t(length)) == 0 else {
    throw BlockError(Errno(rawValue: errno), "truncate \(path)")
  }
}

/// The file's bytes as the operating system sees them.
func contents(of path: String) throws -> [UInt8] {
  [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
}

/// The file's length and allocated bytes, from stat(2).
func fileStatus(_ path: String) throws -> (size: Int64, allocated: Int64) {
  var info = stat()
  guard stat(path, &info) == 0 else { throw BlockError(Errno(rawValue: errno), "stat \(path)") }
  return (Int64(info.st_size), Int64(info.st_blocks) * 512)
}

/// A recognisable byte pattern: byte i of the pattern seeded with `seed`.
func pattern(_ count: Int, seed: UInt8 = 1) -> [UInt8] {
  (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &* 7 &+ ($0 >> 8)) }
}

/// Opens `path` with the `file` driver directly; `underFormat` opens it as a
/// format such as qcow2 opens its file (not sharing writes).
@BlockActor
func openFileNode(
  _ path: String, underFormat: Bool = false, readOnly: Bool = false,
  cache: CacheMode = .writeback, discard: DiscardMode = .unmap, forceShare: Bool = false,
  extra: [String: String] = [:], aio: String? = nil
) async throws -> BlockNode {
  var options = DriverOptions(extra)
  if let aio { options["aio"] = aio }
  options["filename"] = path
  options["driver"] = "file"
  let context = OpenContext(
    node: NodeOptions(readOnly: readOnly, cache: cache, discard: discard), forceShare: forceShare)
  if underFormat { return try await ImageOpener.openNode(&options, context: context) }
  return try await ImageOpener.open(filename: nil, options: options, context: context)
}

extension BlockNode {
  /// The file driver behind a `file` node.
  var fileDriver: FileDriver { driver as! FileDriver }
}

/// Expects `body` to throw a ``BlockError`` and returns it.
@BlockActor
func expectBlockError(
  sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void
) async -> BlockError? {
  do {
    try await body()
    Issue.record("expected a BlockError, nothing was thrown", sourceLocation: sourceLocation)
  } catch let error as BlockError {
    return error
  } catch {
    Issue.record("expected a BlockError, got \(error)", sourceLocation: sourceLocation)
  }
  return nil
}

/// The file driver's I/O backends a test runs over: the thread pool, the
/// io_uring, and the io_uring with every request refused (the fallback).
enum FileBackend: String, CaseIterable, Sendable, CustomTestStringConvertible {
  case threads
  case ioUring = "io_uring"
  case ioUringFallback = "io_uring (full, falls back)"

  var testDescription: String { rawValue }

  /// Opens `path` with this backend (cache mode as given).
  @BlockActor
  func open(_ path: String, readOnly: Bool = false, cache: CacheMode = .writeback) async throws
    -> BlockNode
  {
    let node = try await openFileNode(
      path, readOnly: readOnly, cache: cache, aio: self == .threads ? "threads" : "io_uring")
    let driver = node.fileDriver
    #expect(driver.usesIOURing == (self != .threads && FileRing.shared != nil))
    if self == .ioUringFallback { driver.ringRefusesRequests = true }
    return node
  }
}
