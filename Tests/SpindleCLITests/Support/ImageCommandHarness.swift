import BlockCore
import Foundation
import Testing

/// Runs one qemu-img command line twice, on identical copies of a set of
/// files: with the real `qemu-img` in one directory and with Spindle
/// (in-process, invoked as `qemu-img`) in another.
///
/// Arguments may contain `DIR`, replaced by each run's directory (QEMU
/// resolves relative names against its working directory, which a test
/// cannot change per run); outputs have the directory masked back to `DIR`.
struct ImageCommandRun: Sendable, CustomStringConvertible {
  var qemu: ToolResult
  var spindle: ToolResult
  /// The two directories after the runs.
  var qemuDirectory: String
  var spindleDirectory: String
  /// Keeps the directories alive.
  let fixture: ImageFixture

  var description: String { "qemu-img:\n\(qemu)\nspindle:\n\(spindle)" }

  /// The names of the regular files in the qemu-img directory.
  func fileNames() throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: qemuDirectory).sorted()
  }

  /// The file names in the Spindle directory.
  func spindleFileNames() throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: spindleDirectory).sorted()
  }

  /// Whether `name` has the same bytes in both directories, once the
  /// directories' names (of equal length) stored in it are masked.
  func sameBytes(_ name: String) -> Bool {
    guard let qemuData = FileManager.default.contents(atPath: "\(qemuDirectory)/\(name)"),
      let spindleData = FileManager.default.contents(atPath: "\(spindleDirectory)/\(name)")
    else { return false }
    return sameBytesMaskingNames(
      Array(qemuData), Array(spindleData), Array(qemuDirectory.utf8),
      Array(spindleDirectory.utf8))
  }

  /// `qemu-img compare` of `name` from both directories (exit status 0: same
  /// contents).
  func compareContents(_ name: String, format: String? = nil) async throws -> ToolResult {
    var arguments = ["compare"]
    if let format { arguments += ["-f", format, "-F", format] }
    arguments += ["\(qemuDirectory)/\(name)", "\(spindleDirectory)/\(name)"]
    return try await runProcess("qemu-img", arguments)
  }

  /// `qemu-img check` of `name` in the Spindle directory.
  func checkSpindleImage(_ name: String) async throws -> ToolResult {
    try await runProcess("qemu-img", ["check", "\(spindleDirectory)/\(name)"])
  }
}

/// Prepares two identical directories with `setup` (called with each
/// directory), runs `arguments` with qemu-img and Spindle, and masks the
/// directories.
func runImageCommand(
  _ arguments: [String], setup: (String) async throws -> Void = { _ in }
) async throws -> ImageCommandRun {
  let fixture = try ImageFixture()
  // Names of equal length: images store backing file names.
  let qemuDirectory = fixture.path("q")
  let spindleDirectory = fixture.path("s")
  for directory in [qemuDirectory, spindleDirectory] {
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    try await setup(directory)
  }
  func substituted(_ directory: String) -> [String] {
    arguments.map { $0.replacingOccurrences(of: "DIR", with: directory) }
  }
  func masked(_ result: ToolResult, _ directory: String) -> ToolResult {
    var result = result.masked()
    result.output = result.output.replacingOccurrences(of: directory, with: "DIR")
    result.error = result.error.replacingOccurrences(of: directory, with: "DIR")
    return result
  }
  let qemu = try await runProcess("qemu-img", substituted(qemuDirectory))
  let spindle = await runSpindle(["qemu-img"] + substituted(spindleDirectory))
  return ImageCommandRun(
    qemu: masked(qemu, qemuDirectory), spindle: masked(spindle, spindleDirectory),
    qemuDirectory: qemuDirectory, spindleDirectory: spindleDirectory, fixture: fixture)
}

/// Runs the real qemu-img in a set-up step and fails the test if it fails.
func qemuImg(_ arguments: [String]) async throws {
  let result = try await runProcess("qemu-img", arguments)
  #expect(result.status == 0, "qemu-img \(arguments): \(result)")
}

/// Whether `first` and `second` are equal once every occurrence of `firstName`
/// in `first` that faces `secondName` in `second` is allowed (names of equal
/// length). Whole blocks are compared with `memcmp` and only differing blocks
/// are looked at bytewise: generic collection searches take minutes on
/// multi-megabyte images under AddressSanitizer.
func sameBytesMaskingNames(
  _ first: [UInt8], _ second: [UInt8], _ firstName: [UInt8], _ secondName: [UInt8]
) -> Bool {
  precondition(firstName.count == secondName.count, "names of different lengths")
  guard first.count == second.count else { return false }
  if first == second { return true }
  let length = firstName.count
  return first.withUnsafeBytes { one in
    second.withUnsafeBytes { two in
      var position = 0
      while position < one.count {
        let block = min(4096, one.count - position)
        if memcmp(one.baseAddress! + position, two.baseAddress! + position, block) == 0 {
          position += block
          continue
        }
        // The first differing byte must lie inside a pair of names.
        while one[position] == two[position] { position += 1 }
        let candidates = max(0, position - length + 1)...position
        guard
          let start = candidates.first(where: { start in
            start + length <= one.count
              && memcmp(one.baseAddress! + start, firstName, length) == 0
              && memcmp(two.baseAddress! + start, secondName, length) == 0
          })
        else { return false }
        position = start + length
      }
      return true
    }
  }
}
